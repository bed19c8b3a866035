"""Output of the transforms: InfluxDB points of one measurement, as columns.

Like the input, the output crosses Beam in batches: one `PointBatch` per
window (and kind) holds every row of it, tags packed into one byte string
(`PackedRows`) and fields as numpy columns, so passing it between stages
costs a copy, not a pickled object per point. `points()` turns it into
`storage.line_protocol.Point`s at the sink, the only place that needs one
Python object per point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.batch import PackedRows
from storage.line_protocol import Point


@dataclass(frozen=True, eq=False)
class PointBatch:
    """Points of one measurement: row i has the tag values `tags[i]` (keys `tag_keys`, "" = no such tag),
    time `time_ms[i]` and the fields of column i.

    A field column is float64 with NaN where the row has no such field, or an
    object array with None for that; columns named in `integers` are written
    as InfluxDB integers.
    """

    measurement: str
    tag_keys: tuple[str, ...]
    tags: PackedRows
    time_ms: np.ndarray  # int64
    fields: Mapping[str, np.ndarray]
    integers: frozenset[str] = field(default_factory=frozenset)
    # Row i's tags are `tags[tag_index[i]]` when set: a table shared by many batches (e.g. all areas of a segment).
    tag_index: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        measurement: str,
        tag_keys: Sequence[str],
        tag_rows: Sequence[Sequence[str]],
        time_ms: np.ndarray,
        fields: Mapping[str, np.ndarray],
        integers: frozenset[str] = frozenset(),
    ) -> PointBatch:
        return cls(measurement, tuple(tag_keys), PackedRows(tag_rows, len(tag_keys)), time_ms, fields, integers)

    def __len__(self) -> int:
        return len(self.time_ms)

    def take(self, mask: np.ndarray) -> PointBatch:
        """The rows where `mask` is true (same tag table)."""
        if mask.all():
            return self
        index = np.flatnonzero(mask) if self.tag_index is None else self.tag_index[mask]
        fields = {name: column[mask] for name, column in self.fields.items()}
        return PointBatch(self.measurement, self.tag_keys, self.tags, self.time_ms[mask], fields, self.integers, index)

    def points(self) -> list[Point]:
        """One point per row, without the tags and fields that row does not have."""
        names = list(self.fields)
        if not names:
            return []
        columns, absent = [], np.zeros(len(self), dtype=bool)
        for name, column in self.fields.items():
            missing = (
                np.isnan(column) if column.dtype.kind == "f" else np.array([v is None for v in column], dtype=bool)
            )
            absent |= missing
            if name in self.integers:  # Python ints, so the line protocol writes integers
                values = np.where(missing, 0, column).astype(np.int64).tolist()
                columns.append(
                    [None if m else v for v, m in zip(values, missing.tolist(), strict=True)]
                    if missing.any()
                    else values
                )
            else:
                columns.append(column.tolist())
        table = self.tags.items
        tag_rows = table if self.tag_index is None else [table[i] for i in self.tag_index.tolist()]
        keys, measurement = self.tag_keys, self.measurement
        points = []
        for values, tags, time, partial in zip(
            zip(*columns, strict=True), tag_rows, self.time_ms.tolist(), absent.tolist(), strict=True
        ):
            if partial:  # drop the fields this row does not have (NaN or None)
                fields = {n: v for n, v in zip(names, values, strict=True) if v is not None and v == v}
                if not fields:
                    continue
            else:
                fields = dict(zip(names, values, strict=True))
            points.append(Point(measurement, {k: v for k, v in zip(keys, tags, strict=True) if v}, fields, time, "ms"))
        return points
