"""Output of the transforms: InfluxDB points of one measurement, as columns.

Like the input, the output crosses Beam in batches: one `PointBatch` per kind
and window holds every row (sensor, district, city, super-cluster) of it.
`points()` turns it into `storage.line_protocol.Point`s at the sink, the only
place that needs one Python object per point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from storage.line_protocol import FieldValue, Point


@dataclass(frozen=True, eq=False)
class PointBatch:
    """Points of one measurement: row i has tags `tags[i]`, time `time_ms[i]` and the fields of column i.

    A field column is float64 with NaN where the row has no such field, or an
    object array with None for that; columns named in `integers` are written
    as InfluxDB integers.
    """

    measurement: str
    tags: Sequence[Mapping[str, str]]
    time_ms: np.ndarray  # int64
    fields: Mapping[str, np.ndarray]
    integers: frozenset[str] = field(default_factory=frozenset)

    def __len__(self) -> int:
        return len(self.time_ms)

    def points(self) -> list[Point]:
        """One point per row, without the fields that row does not have."""
        columns = [(name, column.tolist(), name in self.integers) for name, column in self.fields.items()]
        points = []
        for i, (tags, time) in enumerate(zip(self.tags, self.time_ms.tolist(), strict=True)):
            fields: dict[str, FieldValue] = {}
            for name, values, integer in columns:
                value = values[i]
                if value is None or value != value:  # None or NaN: absent in this row
                    continue
                fields[name] = int(value) if integer else value
            if fields:
                points.append(Point(self.measurement, dict(tags), fields, time, "ms"))
        return points
