"""What a follow cycle writes, and the AQI's hourly means it keeps between cycles.

A follow cycle recomputes the hours its new readings fall in from the spool
(every reading of those hours, so each window's value is complete), but writes
only the rows of the windows those readings are in (`Touched`): per rollup
window and level, the row of each area a new reading is in; per sensor-hour,
its health; the AQI of each area for the hours whose averaging period holds a
new reading; the anomalies of the sensor-hours with new readings. Every other
row of those hours was written by an earlier cycle and no reading of it has
arrived since, so it already holds its final value: the cost of a cycle follows
its new readings, not the fleet.

The AQI's 24 h and 8 h means need the hourly means of the day before the
cycle's hours. Rather than re-read a day of spool every cycle, the hourly means
of every row (sensor and area) are kept in `AqiHours`, a compact numpy file
next to the checkpoint (`{home}/pipelines/aqi_hours.npz`, a few hundred kB at
pilot scale), replaced atomically after the cycle's points were acknowledged.
(The other choice, reading them back from the `{kind}_1h` rollups, would need a
query per cycle, the 75 % coverage rule applied to rollup counts, and would
break on any InfluxDB retention or write failure; the file is exact, local and
as durable as the checkpoint.) A cycle finds the hours it does not recompute in
that file; when the file lacks them (first start, or it was lost) the cycle
reads the day of spool once, as a bounded run does, and the file is complete
from there on.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np

from pipelines.anomalies import RISE_SPAN_S
from pipelines.areas import Area, areas_of
from pipelines.batch import ReadingBatch
from pipelines.points import PointBatch
from pipelines.thai_aqi import POLLUTANT_NAMES, Means
from pipelines.timing import HOUR_MS, floor_to
from sensors.aqi import AVERAGING_HOURS
from sensors.files import write_atomic
from sensors.registry import Registry
from storage.schema import (
    ANOMALY_MEASUREMENT,
    AQI_MEASUREMENT,
    HEALTH_MEASUREMENT,
    SENSOR_TAGS,
    WINDOW_SECONDS,
    WINDOWS,
    rollup_levels,
    rollup_measurement,
)

# A reading can change the AQI of its hour and of the hours whose averaging period holds it.
AQI_REACH_HOURS = max(AVERAGING_HOURS.values())
# A reading is the reference of the rate of rise of readings up to this much later.
RISE_SPAN_MS = RISE_SPAN_S * 1000
_SENSOR_ID = SENSOR_TAGS.index("sensor_id")


@dataclass(frozen=True)
class Touched:
    """The rows a cycle writes: `(measurement, tag row, time ms)` cells, and sensor-hours for anomalies.

    Health rows of sensors without readings (received 0) are kept: a silent sensor has no reading
    to touch its row (`SensorHealth` names silent sensors only in hours that have ended).
    """

    cells: frozenset[tuple[str, tuple[str, ...], int]]
    sensor_hours: frozenset[tuple[tuple[str, ...], int]]

    @classmethod
    def of(cls, batches: Iterable[ReadingBatch], registry: Registry, aqi_kinds: Iterable[str]) -> Touched:
        cells: set[tuple[str, tuple[str, ...], int]] = set()
        sensor_hours: set[tuple[tuple[str, ...], int]] = set()
        aqi = frozenset(aqi_kinds)
        for batch in batches:
            if not len(batch):
                continue
            kind = registry.kinds.get(batch.kind)
            interval_s = kind.interval_s if kind is not None else 1
            areas = [tuple(tuple(area) for area in areas_of(series)) for series in batch.series]
            for name in WINDOWS:
                width = WINDOW_SECONDS[name] * 1000
                levels = rollup_levels(name, interval_s)
                measurement = rollup_measurement(batch.kind, name)
                level_areas = [tuple(a for a in row if a[0] in levels) for row in areas]
                for sensor, start in _pairs(batch, width):
                    cells.update((measurement, area, start) for area in level_areas[sensor])
            for sensor, hour in _pairs(batch, HOUR_MS):
                series = tuple(batch.series[sensor])
                cells.add((HEALTH_MEASUREMENT, series, hour))
                sensor_hours.add((series, hour))
                if batch.kind in aqi:
                    for later in range(AQI_REACH_HOURS):
                        cells.update((AQI_MEASUREMENT, area, hour + later * HOUR_MS) for area in areas[sensor])
            # The reading may be the reference of a rate of rise in the next hour's first quarter.
            shifted = dataclasses.replace(batch, ts=batch.ts + RISE_SPAN_MS)
            sensor_hours.update((tuple(batch.series[s]), h) for s, h in _pairs(shifted, HOUR_MS))
        return cls(frozenset(cells), frozenset(sensor_hours))

    def keep(self, batch: PointBatch) -> PointBatch:
        """The rows of `batch` this cycle writes."""
        table = batch.tags.items
        rows = range(len(batch)) if batch.tag_index is None else batch.tag_index.tolist()
        times = batch.time_ms.tolist()
        if batch.measurement == ANOMALY_MEASUREMENT:
            width = len(batch.tag_keys) - 3  # sensor tags, then kind, metric, type
            mask = [
                (tuple(table[r][:width]), floor_to(t, HOUR_MS)) in self.sensor_hours
                for r, t in zip(rows, times, strict=True)
            ]
        else:
            m = batch.measurement
            mask = [(m, tuple(table[r]), t) in self.cells for r, t in zip(rows, times, strict=True)]
            if m == HEALTH_MEASUREMENT:
                silent = batch.fields["received"] == 0
                mask = [a or b for a, b in zip(mask, silent.tolist(), strict=True)]
        return batch.take(np.array(mask, dtype=bool))

    def save(self, path: Path) -> Path:
        """Pickle (no compression) to `path`, for `KeepTouched`; returns `path`."""
        path.write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        return path

    def anomaly_sensors(self) -> dict[int, list[str]]:
        """Per hour, the sensor ids whose anomalies this cycle rewrites (cleared first)."""
        out: dict[int, set[str]] = {}
        for series, hour in self.sensor_hours:
            out.setdefault(hour, set()).add(series[_SENSOR_ID])
        return {hour: sorted(ids) for hour, ids in sorted(out.items())}


def _pairs(batch: ReadingBatch, width_ms: int) -> list[tuple[int, int]]:
    """The distinct (series index, window start) of a batch's readings."""
    series = max(len(batch.series), 1)
    keys = np.unique(batch.ts // width_ms * series + batch.sensor.astype(np.int64))  # one int per pair: a 1-d sort
    starts, sensors = np.divmod(keys, series)
    return list(zip(sensors.tolist(), (starts * width_ms).tolist(), strict=True))


@dataclass
class AqiHours:
    """Hourly pollutant means of every AQI row (`thai_aqi.Means`), complete for every hour from `since_ms`."""

    hours: dict[int, Means] = field(default_factory=dict)
    since_ms: int | None = None

    def covers(self, start_ms: int) -> bool:
        """Whether the hours from `start_ms` on are all here (an hour without data has no entry)."""
        return self.since_ms is not None and self.since_ms <= start_ms

    def prior(self, start_ms: int, end_ms: int, skip: tuple[int, int]) -> list[Means]:
        """The hours in [start_ms, end_ms) except those in [skip[0], skip[1]) (recomputed by the cycle)."""
        return [m for h, m in sorted(self.hours.items()) if start_ms <= h < end_ms and not skip[0] <= h < skip[1]]

    def update(self, means: Iterable[Means], since_ms: int | None, keep_from_ms: int) -> None:
        """Take the cycle's hourly means (the latest pane of each hour) and drop hours before `keep_from_ms`."""
        for m in means:
            if m.hour_ms not in self.hours or self.hours[m.hour_ms].pane <= m.pane:
                self.hours[m.hour_ms] = Means(m.hour_ms, m.rows, m.means)  # pane 0: one firing per cycle
        if since_ms is not None and (self.since_ms is None or since_ms < self.since_ms):
            self.since_ms = since_ms
        self.hours = {h: m for h, m in self.hours.items() if h >= keep_from_ms}
        if self.since_ms is not None:
            self.since_ms = max(self.since_ms, keep_from_ms)

    @classmethod
    def load(cls, path: Path) -> AqiHours:
        """The saved state, or an empty one (the cycle then reads its look-back from the spool)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                rows = [Area(*row) for row in data["rows"].tolist()]
                hour, row, means = data["hour"], data["row"], data["means"]
                since = int(data["since"][0])
        except (OSError, KeyError, ValueError):
            return cls()
        out = cls(since_ms=since if since >= 0 else None)
        for h in np.unique(hour).tolist():
            at = np.flatnonzero(hour == h)
            out.hours[int(h)] = Means(int(h), tuple(rows[i] for i in row[at].tolist()), means[at])
        return out

    def save(self, path: Path) -> None:
        """Replace the file atomically and durably (`sensors.files.write_atomic`)."""
        table = sorted({row for m in self.hours.values() for row in m.rows})
        position = {row: i for i, row in enumerate(table)}
        ordered = [self.hours[h] for h in sorted(self.hours)]
        arrays: dict[str, Any] = {
            "rows": np.array([tuple(r) for r in table], dtype=str).reshape(len(table), 5),
            "hour": np.array([m.hour_ms for m in ordered for _ in m.rows], dtype=np.int64),
            "row": np.array([position[r] for m in ordered for r in m.rows], dtype=np.int32),
            "means": (np.concatenate([m.means for m in ordered]) if ordered else np.zeros((0, len(POLLUTANT_NAMES)))),
            "since": np.array([self.since_ms if self.since_ms is not None else -1], dtype=np.int64),
        }
        encoded = io.BytesIO()
        np.savez(encoded, **arrays)
        write_atomic(path, encoded.getvalue())


def load_exported(folder: Path) -> list[Means]:
    """The hourly means a run exported (`thai_aqi.ExportHours`) into `folder`."""
    out = []
    for path in sorted(folder.glob("*.pkl")):
        with open(path, "rb") as handle:
            out.append(pickle.load(handle))
    return out


class KeepTouched(beam.DoFn):
    """`Touched.keep` as a step that reads the touched rows from a file (`Touched.save`).

    Beam pickles a step with its arguments, compressed with bz2 at level 9, and unpickles it per
    bundle: with the touched set inside, that was about a fifth of a follow cycle over the 10x
    fleet. A path costs nothing; the set is loaded once per process and cycle (`_load_touched`).
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def process(self, batch: PointBatch) -> Iterable[PointBatch]:
        yield _load_touched(self.path).keep(batch)


@functools.lru_cache(maxsize=1)  # one cycle at a time; each cycle's file has a path of its own
def _load_touched(path: str) -> Touched:
    with open(path, "rb") as handle:
        touched = pickle.load(handle)
    assert isinstance(touched, Touched), path
    return touched


@dataclass(frozen=True)
class Incremental:
    """What makes a run a follow cycle: the rows to write, and the AQI's hours from the state (or None)."""

    touched: Touched
    aqi_prior: Sequence[Means] | None
    aqi_export: Path
    touched_file: Path  # `touched`, saved for `KeepTouched`
