"""Output of the transforms: InfluxDB points of one measurement, as columns.

Like the input, the output crosses Beam in batches: one `PointBatch` per
window (and kind) holds every row of it, tags packed into one byte string
(`PackedRows`) and fields as numpy columns, so passing it between stages
costs a copy, not a pickled object per point. `lines()` turns it into line
protocol at the sink, column by column: each distinct tag row is escaped once,
each column is formatted in one pass, and no `Point` object is built (building
and encoding `Point`s cost 40 % of a backfill, research/pipelines-end-to-end.md).
`points()` gives `storage.line_protocol.Point`s, for tests and tools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.batch import PackedRows
from storage.line_protocol import Encoder, Point, escape_string_field


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

    def lines(self, encoder: Encoder, prefixes: dict[tuple[str, tuple[str, ...]], str] | None = None) -> list[str]:
        """The line protocol of every row that has a field (millisecond times), as `points()` would encode.

        `prefixes` caches each series' escaped `measurement,tags ` across calls (a tag table is
        shared by every window of a segment, so most rows repeat).
        """
        table = self.tags.items
        keys, measurement = self.tag_keys, self.measurement
        cache = {} if prefixes is None else prefixes
        rows = list(range(len(self))) if self.tag_index is None else self.tag_index.tolist()
        prefix: dict[int, str] = {}
        for row in set(rows):
            tags = tuple(table[row])
            head = cache.get((measurement, tags))
            if head is None:
                named = {k: v for k, v in zip(keys, tags, strict=True) if v}
                head = cache[(measurement, tags)] = encoder.series_key(measurement, named)[0] + " "
            prefix[row] = head
        columns: list[list[str | None]] = []
        complete = True
        for name, column in self.fields.items():
            key = encoder.field_key(name)
            text: list[str | None]
            if column.dtype.kind == "f":
                present = ~np.isnan(column)
                if name in self.integers:
                    text = [f"{key}{v}i" for v in np.where(present, column, 0).astype(np.int64).tolist()]
                else:
                    text = [f"{key}{v!r}" for v in column.tolist()]
                if not present.all():
                    text = [t if p else None for t, p in zip(text, present.tolist(), strict=True)]
            else:
                text = [None if v is None else key + escape_string_field(v) for v in column.tolist()]
            complete = complete and None not in text
            columns.append(text)
        # Most batches have every field in every row: then a row's fields are simply joined.
        rows_fields = zip(*columns, strict=True)
        joined = map(",".join, rows_fields) if complete else (",".join(filter(None, f)) for f in rows_fields)
        return [
            f"{prefix[row]}{fields} {time}"
            for row, time, fields in zip(rows, self.time_ms.tolist(), joined, strict=True)
            if fields
        ]

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
