"""Anomalies: readings an alert should look at, as points.

    PCollection[ReadingBatch] -> PCollection[PointBatch]   (`anomalies`)

Concepts: the readings grouped into hours (`pipelines.hours.GroupIntoHours`, which
`pipeline run` shares with the other pipelines), each hour with the 15 minutes before
it (the grouping also stamps every hour's last quarter into the next hour), so a rate
at the start of an hour still has readings to compare with; `ACCUMULATING` late panes.

Two kinds of anomaly, both data-driven (no kind is named in code):
- `spike`: a value whose modified z-score within its sensor's readings of the
  hour exceeds 3.5 (`pipelines.robust`, the readings `SensorHealth` counts as
  outliers). Fields: `value`, `score` (the z-score), `threshold`.
- `rapid_rise`: for a metric with alert thresholds at the sensor's site (the
  registry's `site_thresholds`, e.g. a flood gauge's `level`), the value moves
  towards danger faster than `(danger - warning)` per `rise_horizon_s` (an
  hour): it would go from the warning to the danger level within the horizon.
  The rate is taken against the sensor's latest reading at least
  `RISE_SPAN_S` (15 min) earlier, which smooths out gauge noise. Fields:
  `value`, `score` (the rate, unit per hour), `threshold` (the limit rate).

Tags: the sensor tags of the raw measurement plus `kind`, `metric`, `type`
(names in `storage.schema`: `ANOMALY_TAGS`, `ANOMALY_FIELDS`, `ANOMALY_TYPES`).
Time: the reading's `ts`. A reading is judged once, in the window whose hour
holds it; `emit=(start_ms, end_ms)` keeps only readings in that range (a
bounded run reads `RISE_SPAN_S` before it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.transforms import window

from pipelines.batch import ReadingBatch
from pipelines.hours import GroupIntoHours, Hour
from pipelines.points import PointBatch
from pipelines.robust import Z_THRESHOLD, modified_z
from pipelines.settings import ALLOWED_LATENESS_S
from pipelines.timing import HOUR_MS, WINDOW, window_end_ms, window_start_ms
from sensors.registry import Registry
from storage.schema import (
    ANOMALY_FIELDS,
    ANOMALY_MEASUREMENT,
    ANOMALY_RAPID_RISE,
    ANOMALY_SPIKE,
    ANOMALY_TAGS,
)

RISE_SPAN_S = 900
RISE_HORIZON_S = 3600
LOOKBACK_MS = RISE_SPAN_S * 1000
_KEY_SHIFT = 1 << 40  # sensor * shift + ms since window start: one sortable key per (sensor, ts)


class Anomalies(beam.PTransform):
    """`anomalies` points: spikes of any metric, rapid rises of metrics with site thresholds."""

    def __init__(
        self,
        registry: Registry,
        emit: tuple[int, int] | None = None,
        *,
        rise_horizon_s: int = RISE_HORIZON_S,
        allowed_lateness_s: int = ALLOWED_LATENESS_S,
    ) -> None:
        super().__init__()
        # Signed limit rate (unit per hour) of each (site, metric) with thresholds: towards danger.
        self.limits = {
            (site.id, metric): (t.danger - t.warning) * 3600 / rise_horizon_s
            for site in registry.sites.values()
            for metric, t in site.thresholds.items()
        }
        self.emit = emit
        self.allowed_lateness_s = allowed_lateness_s

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "GroupIntoHours" >> GroupIntoHours(self.allowed_lateness_s, before_s=RISE_SPAN_S)
            | "DetectInHours" >> self.from_hours()
        )

    def from_hours(self) -> beam.PTransform:
        """PCollection[Hour] (`GroupIntoHours` with `before_s=RISE_SPAN_S`) -> PCollection[PointBatch]."""
        return "SplitKinds" >> beam.FlatMap(_kinds) | "DetectAnomalies" >> beam.ParDo(
            DetectAnomalies(self.limits, self.emit)
        )


def _kinds(hour: Hour) -> Iterator[tuple[str, list[ReadingBatch]]]:
    """(kind, [its readings of the hour, its readings of the quarter before]) of each kind of the hour."""
    before = {batch.kind: batch for batch in hour.before}
    for batch in hour.batches:
        yield batch.kind, [before[batch.kind], batch] if batch.kind in before else [batch]


class DetectAnomalies(beam.DoFn):
    """(kind, parts of an hour and the quarter before it) -> the hour's anomalies."""

    def __init__(self, limits: Mapping[tuple[str, str], float], emit: tuple[int, int] | None) -> None:
        self.limits = dict(limits)
        self.limited = frozenset(metric for _, metric in self.limits)  # metrics some site has thresholds for
        self.emit = emit

    def process(
        self, element: tuple[str, Iterable[ReadingBatch]], win: window.BoundedWindow = WINDOW
    ) -> Iterator[PointBatch]:
        kind, parts = element
        batch = ReadingBatch.concat(parts).deduplicated()
        hour = window_end_ms(win) - HOUR_MS
        start, end = (hour, hour + HOUR_MS) if self.emit is None else (max(hour, self.emit[0]), self.emit[1])
        judged = (batch.ts >= start) & (batch.ts < end)
        found: list[tuple[int, int, str, float, float]] = []  # (reading, metric, type, score, threshold)
        if judged.any():
            in_hour = batch.ts >= hour
            z = modified_z(batch.take(in_hour))
            spikes = np.argwhere((np.abs(z) > Z_THRESHOLD) & judged[in_hour][:, None])
            positions = np.flatnonzero(in_hour)
            found.extend((positions[i], j, ANOMALY_SPIKE, z[i, j], Z_THRESHOLD) for i, j in spikes.tolist())
            for j, metric in enumerate(batch.metrics):
                if metric in self.limited:
                    found.extend(self._rises(batch, j, metric, judged, win))
        if found:
            yield self._points(kind, batch, found)

    @staticmethod
    def _points(kind: str, batch: ReadingBatch, found: list[tuple[int, int, str, float, float]]) -> PointBatch:
        found.sort(key=lambda f: (int(batch.sensor[f[0]]), int(batch.ts[f[0]]), f[1], f[2]))
        tags = [(*batch.series[int(batch.sensor[i])], kind, batch.metrics[j], type_) for i, j, type_, _, _ in found]
        rows = np.array([i for i, *_ in found])
        return PointBatch.of(
            ANOMALY_MEASUREMENT,
            ANOMALY_TAGS,
            tags,
            batch.ts[rows],
            dict(
                zip(
                    ANOMALY_FIELDS,  # value, score, threshold
                    (
                        batch.values[rows, [j for _, j, *_ in found]],
                        np.array([f[3] for f in found], dtype=np.float64),
                        np.array([f[4] for f in found], dtype=np.float64),
                    ),
                    strict=True,
                )
            ),
        )

    def _rises(
        self, batch: ReadingBatch, j: int, metric: str, judged: np.ndarray, win: window.BoundedWindow
    ) -> Iterator[tuple[int, int, str, float, float]]:
        limit = np.array([self.limits.get((s.site, metric), np.nan) for s in batch.series])
        has = ~np.isnan(batch.values[:, j]) & ~np.isnan(limit[batch.sensor])
        if not has.any():
            return
        at = np.flatnonzero(has)  # readings with a value and a limit, still sorted by (sensor, ts)
        sensor, ts, value = batch.sensor[at].astype(np.int64), batch.ts[at], batch.values[at, j]
        base = window_start_ms(win)
        key = sensor * _KEY_SHIFT + (ts - base)
        ref = np.searchsorted(key, key - RISE_SPAN_S * 1000, side="right") - 1
        ok = (ref >= 0) & judged[at]
        ok[ok] &= sensor[ref[ok]] == sensor[ok]
        for i in np.flatnonzero(ok).tolist():
            r = int(ref[i])
            rate = (value[i] - value[r]) / (ts[i] - ts[r]) * HOUR_MS
            bound = limit[batch.sensor[at[i]]]
            if (bound > 0 and rate >= bound) or (bound < 0 and rate <= bound):
                yield int(at[i]), j, ANOMALY_RAPID_RISE, float(rate), float(bound)
