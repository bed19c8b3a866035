"""SensorHealth: per sensor and hour, what arrived against what its kind promises.

    PCollection[ReadingBatch] -> PCollection[PointBatch]   (`sensor_health_1h`)

Concepts: hourly event-time `FixedWindows` (`pipelines.hours.GroupIntoHours`, which
`pipeline run` shares with the other pipelines); the registry as the list of sensors
that should report (a silent sensor produces no readings, so it can only be
found by name), and with `hours` every kind in every hour of that range, an hour in
which nothing arrived at all named from a side input of the hours seen; `ACCUMULATING`
late panes.

Fields per sensor-hour (tags: the raw measurement's sensor tags):
- `received`: readings in the hour, duplicates (same sensor_id and ts) once;
- `expected`: 3600 / the kind's `interval_s`;
- `completeness`: received / expected, at most 1;
- `flatline`: readings whose every value repeats the sensor's previous reading
  in the hour exactly (`pipelines.robust.repeats_previous`); a stuck sensor
  shows flatline close to received;
- `outliers`: readings with a metric whose modified z-score within the
  sensor-hour exceeds 3.5 (`pipelines.robust`), the same readings `Anomalies`
  writes as spikes;
- `seq_gaps`: sequence numbers skipped between the sensor's readings of the
  hour, in `ts` order (`sensors.seq`: a drop to 0 is a restart); readings lost
  before ingest (a gateway, the broker) or rejected. A gap that spans the
  start of the hour is not seen here (the audit, `smartcity audit
  --production`, sees it); sensors that send no `seq` report 0.
Sensors of the registry without readings get received 0, in hours that have
ended: a sensor is not silent in the hour still under way, and a bounded run
over the current hour writes the same rows as a follow cycle would. Sensors with
readings that the registry no longer lists are reported under the tags they came with.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue

from pipelines.batch import NO_SEQ, ReadingBatch, Series, empty_batch
from pipelines.columns import metrics_by_kind
from pipelines.hours import GroupIntoHours, Hour
from pipelines.points import PointBatch
from pipelines.robust import Z_THRESHOLD, modified_z, repeats_previous
from pipelines.settings import ALLOWED_LATENESS_S
from pipelines.timing import HOUR_MS, WINDOW, ceil_to, floor_to, window_start_ms
from sensors.registry import Registry
from storage.schema import HEALTH_MEASUREMENT, SENSOR_TAGS


class SensorHealth(beam.PTransform):
    """`sensor_health_1h` for every registry sensor; `hours=(start_ms, end_ms)` makes each of those hours report.

    Silent sensors (received 0) are named in the hours that ended by `now_ms` (default: when built).
    """

    def __init__(
        self,
        registry: Registry,
        hours: tuple[int, int] | None = None,
        allowed_lateness_s: int = ALLOWED_LATENESS_S,
        now_ms: int | None = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics_by_kind(registry)
        self.expected = {kind.id: 3600 // kind.interval_s for kind in registry.kinds.values()}
        by_kind: dict[str, list[Series]] = {}
        for s in registry.sensors.values():
            by_kind.setdefault(s.kind, []).append(Series(s.super_cluster, s.city, s.district, s.site, s.id, s.vendor))
        self.sensors: dict[str, tuple[Series, ...]] = {kind: tuple(series) for kind, series in by_kind.items()}
        self.hours = hours
        self.allowed_lateness_s = allowed_lateness_s
        self.now_ms = int(time.time() * 1000) if now_ms is None else now_ms

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches | "GroupIntoHours" >> GroupIntoHours(self.allowed_lateness_s) | "AssessHours" >> self.from_hours()
        )

    def from_hours(self) -> beam.PTransform:
        """PCollection[Hour] (`GroupIntoHours`) -> PCollection[PointBatch]."""
        return _AssessHours(self)


class _AssessHours(beam.PTransform):
    """Each hour's kinds assessed; with `hours`, every kind in every hour of the range.

    An hour in which nothing at all arrived has no element: its silent sensors are named from
    the list of the range's hours, less those seen (a side input). Marker elements flattened
    into the readings would do the same, but a Flatten of outputs of different stages makes the
    local runner copy every reading once more (about a tenth of a backfill).
    """

    def __init__(self, spec: SensorHealth) -> None:
        super().__init__()
        self.spec = spec

    def expand(self, hours: beam.PCollection) -> beam.PCollection:
        spec = self.spec
        assess = AssessHour(spec.expected, spec.sensors, spec.now_ms)
        if spec.hours is None:
            return hours | "SplitKinds" >> beam.FlatMap(_kinds) | "AssessHour" >> beam.ParDo(assess)
        start, end = floor_to(spec.hours[0], HOUR_MS), ceil_to(spec.hours[1], HOUR_MS)
        every = tuple(sorted(spec.metrics))
        assessed = (
            hours
            | "SplitKinds" >> beam.FlatMap(_kinds, (start, end), every, spec.metrics)
            | "AssessHour" >> beam.ParDo(assess)
        )
        seen = (
            hours
            | "HourStarts" >> beam.Map(lambda hour: hour[0])
            | "AllHoursSeen" >> beam.WindowInto(window.GlobalWindows())
        )
        silent = (
            hours.pipeline
            | "ListHours" >> beam.Create(list(range(start, end, HOUR_MS)), reshuffle=False)  # a few ints
            | "AssessSilentHours" >> beam.FlatMap(_silent_hour, every, assess, seen=beam.pvalue.AsList(seen))
            | "WindowIntoHours"
            >> beam.WindowInto(
                window.FixedWindows(3600),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=spec.allowed_lateness_s,
            )
        )
        return (assessed, silent) | "WithSilentHours" >> beam.Flatten()


def _kinds(
    hour: Hour,
    hours: tuple[int, int] = (0, 0),
    every: tuple[str, ...] = (),
    metrics: Mapping[str, tuple[str, ...]] | None = None,
) -> Iterator[tuple[str, list[ReadingBatch]]]:
    """(kind, [its readings]) of each kind of the hour; in `hours`, also of each kind of `every` without any."""
    batches = {batch.kind: batch for batch in hour[1]}
    if metrics is not None and hours[0] <= hour[0] < hours[1]:
        for kind in every:
            batches.setdefault(kind, empty_batch(kind, metrics[kind]))
    for kind in sorted(batches):
        yield kind, [batches[kind]]


def _silent_hour(hour: int, kinds: tuple[str, ...], assess: AssessHour, seen: list[int]) -> Iterator[TimestampedValue]:
    """The health points of an hour in which nothing arrived (one not in `seen`), stamped with the hour."""
    if hour not in seen:
        for kind in kinds:
            for points in assess.assess(kind, empty_batch(kind, ()), hour):
                yield TimestampedValue(points, hour / 1000)


class AssessHour(beam.DoFn):
    """(kind, parts of one hour) -> the hour's health point of every sensor of that kind."""

    def __init__(self, expected: Mapping[str, int], sensors: Mapping[str, tuple[Series, ...]], now_ms: int) -> None:
        self.expected = dict(expected)
        self.sensors = dict(sensors)
        self.now_ms = now_ms

    def process(
        self, element: tuple[str, Iterable[ReadingBatch]], win: window.BoundedWindow = WINDOW
    ) -> Iterator[PointBatch]:
        kind, parts = element
        yield from self.assess(kind, ReadingBatch.concat(parts).deduplicated(), window_start_ms(win))

    def assess(self, kind: str, batch: ReadingBatch, hour: int) -> Iterator[PointBatch]:
        """The health point of every sensor of `kind` in `hour`, from its deduplicated readings."""
        ended = hour + HOUR_MS <= self.now_ms
        silent = self.sensors.get(kind, ()) if ended else ()
        counts: dict[Series, tuple[int, int, int, int]] = dict.fromkeys(silent, (0, 0, 0, 0))
        if len(batch):
            groups = len(batch.series)
            received = np.bincount(batch.sensor, minlength=groups)
            flatline = np.bincount(batch.sensor, weights=repeats_previous(batch), minlength=groups)
            outlier = (np.abs(modified_z(batch)) > Z_THRESHOLD).any(axis=1)
            outliers = np.bincount(batch.sensor, weights=outlier, minlength=groups)
            gaps = seq_gaps(batch)
            for i in np.flatnonzero(received).tolist():
                counts[batch.series[i]] = (int(received[i]), int(flatline[i]), int(outliers[i]), int(gaps[i]))
        if counts:
            yield self._points(kind, counts, hour)

    def _points(self, kind: str, counts: Mapping[Series, tuple[int, int, int, int]], hour: int) -> PointBatch:
        rows = sorted(counts)
        expected = self.expected.get(kind, 0)
        table = np.array([counts[row] for row in rows], dtype=np.float64).reshape(len(rows), 4)
        fields = {
            "received": table[:, 0],
            "expected": np.full(len(rows), float(expected)),
            "completeness": np.minimum(table[:, 0] / expected, 1.0) if expected else np.zeros(len(rows)),
            "flatline": table[:, 1],
            "outliers": table[:, 2],
            "seq_gaps": table[:, 3],
        }
        return PointBatch.of(
            HEALTH_MEASUREMENT,
            SENSOR_TAGS,
            rows,
            np.full(len(rows), hour, dtype=np.int64),
            fields,
            integers=frozenset({"received", "expected", "flatline", "outliers", "seq_gaps"}),
        )


def seq_gaps(batch: ReadingBatch) -> np.ndarray:
    """Sequence numbers skipped per series of a `deduplicated()` batch (sorted by sensor, then ts), by
    `sensors.seq`'s rule: readings without a seq are left out, a step down is a restart."""
    numbered = batch.seq != NO_SEQ
    sensor, seq = batch.sensor[numbered], batch.seq[numbered]
    step = seq[1:] - seq[:-1]
    skipped = np.where((sensor[1:] == sensor[:-1]) & (step > 1), step - 1, 0)
    out = np.zeros(len(batch.series), dtype=np.int64)
    np.add.at(out, sensor[1:], skipped)
    return out
