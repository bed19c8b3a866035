"""ThaiAQI: the hourly Thai AQI of every air-quality sensor and area, after the PCD averaging periods.

    PCollection[ReadingBatch] -> PCollection[PointBatch]   (`aqi_1h`)

Concepts: hourly `FixedWindows` (`pipelines.hours.GroupIntoHours`, which `pipeline run`
shares with the other pipelines); `SlidingWindows` of 24 h, 8 h and 1 h moving
by an hour (one branch per averaging period in `sensors.aqi.AVERAGING_HOURS`)
so each window ends at an hour; `Flatten` and a second hourly grouping join the
periods; `ACCUMULATING` panes, and the latest pane of an hour wins.

How a value is formed (the PCD names the periods; the rest is decided here):

1. Hourly mean per sensor and pollutant over its deduplicated readings in the
   hour. The hour counts only if it holds at least `MIN_HOUR_COVERAGE` (75 %) of
   the readings the kind's `interval_s` promises (45 of 60 at one a minute).
2. Hourly mean per area (district, city, super-cluster): the mean of the valid
   sensor hours in it, each sensor weighted equally, so a sensor that reports
   more often does not outweigh its neighbours; an area hour needs one valid
   sensor hour.
3. The AQI point at hour T (time = T, like `{kind}_1h`) averages the valid
   hourly means of the period that ends with hour T: PM2.5 and PM10 over
   [T-23 h, T+1 h), O3 and CO over [T-7 h, T+1 h), NO2 and SO2 over [T, T+1 h).
   A period mean needs `MIN_PERIOD_COVERAGE` (75 %) of its hours valid
   (18 of 24, 6 of 8, 1 of 1) and hour T itself valid, so no value is carried
   forward into hours without data.
4. `sensors.aqi.thai_aqi` turns the period means into sub-indices, the AQI
   (the highest), its band and the dominant pollutant. A row is written when
   at least one pollutant has a period mean.

A pollutant is any registry metric named like a PCD pollutant and in its unit;
so a new kind measuring `pm25` in ug/m3 joins the AQI without code. A bounded
run must include 23 h of readings before its first hour (`LOOKBACK_MS`) and
emits only the hours in `hours`. A follow cycle gives the hourly means of the
hours it does not read as `prior` instead (`pipelines.incremental.AqiHours`),
and has the hourly means it computes written to `export` for the next cycle.
"""

from __future__ import annotations

import math
import pickle
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.windowed_value import PaneInfo

from pipelines.areas import Area, levels_of
from pipelines.batch import ReadingBatch, Series, SeriesTable
from pipelines.hours import GroupIntoHours, Hour
from pipelines.points import PointBatch
from pipelines.settings import ALLOWED_LATENESS_S
from pipelines.timing import HOUR_MS, PANE, WINDOW, window_end_ms, window_start_ms
from sensors.aqi import AVERAGING_HOURS, POLLUTANTS, UNITS, thai_aqi
from sensors.registry import Registry
from storage.schema import AQI_MEASUREMENT, ROLLUP_TAGS, pollutant_aqi_field

POLLUTANT_NAMES: tuple[str, ...] = tuple(p.name for p in POLLUTANTS)
MIN_HOUR_COVERAGE = 0.75
MIN_PERIOD_COVERAGE = 0.75
LOOKBACK_MS = (max(AVERAGING_HOURS.values()) - 1) * HOUR_MS
_KEY = "aqi"  # one key: sensors of every kind meet in their areas


@dataclass(frozen=True, eq=False)
class Means:
    """Hourly or period means of the pollutants for rows of every level (NaN: no valid mean).

    `hour_ms` is the hour the means belong to (for a period: its last hour);
    `pane` orders re-firings of the same hour under late data (the highest is
    the most complete).
    """

    hour_ms: int
    rows: tuple[Area, ...]
    means: np.ndarray  # float64, (len(rows), len(POLLUTANT_NAMES))
    pane: int = 0
    period_hours: int = 1


def pollutants_of(registry: Registry) -> dict[str, tuple[str, ...]]:
    """Kinds that measure PCD pollutants (metric name and unit match), with those metrics."""
    found = {}
    for kind in registry.kinds.values():
        names = tuple(m.name for m in kind.metrics if m.name in UNITS and m.unit == UNITS[m.name])
        if names:
            found[kind.id] = names
    return found


class ThaiAQI(beam.PTransform):
    """`aqi_1h` points per sensor and area; `hours=(start_ms, end_ms)` limits the hours written."""

    def __init__(
        self,
        registry: Registry,
        hours: tuple[int, int] | None = None,
        allowed_lateness_s: int = ALLOWED_LATENESS_S,
        *,
        prior: Sequence[Means] = (),
        export: Path | None = None,
    ) -> None:
        super().__init__()
        self.prior = tuple(prior)
        self.export = export
        kinds = pollutants_of(registry)
        # Readings an hour must hold, per kind: MIN_HOUR_COVERAGE of what interval_s promises.
        self.min_readings = {k: MIN_HOUR_COVERAGE * 3600 / registry.kinds[k].interval_s for k in kinds}
        self.hours = hours
        self.allowed_lateness_s = allowed_lateness_s

    def _windowing(self, windowfn: window.WindowFn) -> beam.WindowInto:
        return beam.WindowInto(
            windowfn,
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=self.allowed_lateness_s,
        )

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "GroupIntoHours" >> GroupIntoHours(self.allowed_lateness_s, kinds=frozenset(self.min_readings))
            | "AQIOfHours" >> self.from_hours()
        )

    def from_hours(self) -> beam.PTransform:
        """PCollection[Hour] (`GroupIntoHours`) -> PCollection[PointBatch]: steps 1-4 from each hour's readings."""
        return _AqiOfHours(self)


class _AqiOfHours(beam.PTransform):
    def __init__(self, spec: ThaiAQI) -> None:
        super().__init__()
        self.spec = spec

    def expand(self, grouped: beam.PCollection) -> beam.PCollection:
        spec = self.spec
        hourly = (
            grouped
            | "SelectPollutants" >> beam.Map(_pollutants, frozenset(spec.min_readings))
            | "AverageHours" >> beam.ParDo(AverageHour(spec.min_readings))
        )
        if spec.export is not None:
            _ = hourly | "ExportHours" >> beam.ParDo(ExportHours(spec.export))
        if spec.prior:
            known = (
                grouped.pipeline
                | "PriorHours" >> beam.Create(spec.prior)
                | "StampPriorHours" >> beam.Map(lambda m: TimestampedValue((_KEY, m), m.hour_ms / 1000))
                | "WindowPriorHours" >> spec._windowing(window.FixedWindows(3600))
            )
            hourly = (hourly, known) | "WithPriorHours" >> beam.Flatten()
        periods = []
        for hours in sorted(set(AVERAGING_HOURS.values()), reverse=True):
            pollutants = tuple(p for p in POLLUTANT_NAMES if AVERAGING_HOURS[p] == hours)
            periods.append(
                hourly
                | f"WindowInto{hours}h" >> spec._windowing(window.SlidingWindows(hours * 3600, 3600))
                | f"GroupBy{hours}h" >> beam.GroupByKey()
                | f"Average{hours}h" >> beam.ParDo(AveragePeriod(hours, pollutants, spec.hours))
                | f"WindowInto{hours}hResultHours" >> spec._windowing(window.FixedWindows(3600))
            )
        return (
            tuple(periods)
            | "MergePeriods" >> beam.Flatten()
            | "GroupByResultHour" >> beam.GroupByKey()
            | "ComputeAQI" >> beam.ParDo(ComputeAQI())
        )


def _pollutants(hour: Hour, kinds: frozenset[str]) -> tuple[int, list[ReadingBatch]]:
    """The hour's batches of kinds that measure pollutants, with the pollutants as columns."""
    return hour[0], [batch.select(POLLUTANT_NAMES) for batch in hour[1] if batch.kind in kinds]


class AverageHour(beam.DoFn):
    """(key, parts of one hour, every pollutant kind) -> `Means` of the hour for every sensor and area (steps 1-2)."""

    def __init__(self, min_readings: Mapping[str, float]) -> None:
        self.min_readings = dict(min_readings)

    def process(
        self,
        element: tuple[object, Iterable[ReadingBatch]],
        win: window.BoundedWindow = WINDOW,
        pane: PaneInfo = PANE,
    ) -> Iterator[tuple[str, Means]]:
        _, parts = element
        by_kind: dict[str, list[ReadingBatch]] = {}
        for part in parts:
            by_kind.setdefault(part.kind, []).append(part)
        tables, sensor_means = [], []
        for kind in sorted(by_kind):
            batch = ReadingBatch.concat(by_kind[kind]).deduplicated()
            if not len(batch):
                continue
            starts = batch.group_starts()
            present = ~np.isnan(batch.values)
            count = np.add.reduceat(present, starts, axis=0)
            total = np.add.reduceat(np.where(present, batch.values, 0.0), starts, axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(count >= self.min_readings[kind], total / count, np.nan)
            tables.append([batch.series[i] for i in batch.sensor[starts].tolist()])
            sensor_means.append(means)
        if tables:
            yield _KEY, self._areas(tables, sensor_means, window_start_ms(win), pane.index)

    @staticmethod
    def _areas(tables: list[list[Series]], sensor_means: list[np.ndarray], hour: int, pane: int) -> Means:
        table = SeriesTable(tuple(s for t in tables for s in t))
        means = np.concatenate(sensor_means)
        valid = ~np.isnan(means)
        levels = levels_of(table)
        total = levels.reduce(np.add, np.where(valid, means, 0.0), 0.0)
        count = levels.reduce(np.add, valid.astype(np.float64), 0.0)
        rows = np.flatnonzero(count.sum(axis=1) > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            area_means = np.where(count > 0, total / count, np.nan)[rows]
        return Means(hour, tuple(levels.rows[i] for i in rows.tolist()), area_means, pane)


class ExportHours(beam.DoFn):
    """Hourly `Means` -> a pickle file each in `folder` (a follow cycle keeps them for the next one)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def process(self, element: tuple[str, Means]) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{element[1].hour_ms}-{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(element[1]))
        return iter(())


def _latest_per_hour(means: Iterable[Means]) -> dict[int, Means]:
    latest: dict[int, Means] = {}
    for m in means:
        if m.hour_ms not in latest or m.pane > latest[m.hour_ms].pane:
            latest[m.hour_ms] = m
    return latest


class AveragePeriod(beam.DoFn):
    """(key, hourly `Means` of a sliding window) -> `Means` of the period ending at its last hour (step 3)."""

    def __init__(self, hours: int, pollutants: tuple[str, ...], emit: tuple[int, int] | None) -> None:
        self.hours = hours
        self.columns = [POLLUTANT_NAMES.index(p) for p in pollutants]
        self.needed = math.ceil(MIN_PERIOD_COVERAGE * hours)
        self.emit = emit

    def process(
        self,
        element: tuple[str, Iterable[Means]],
        win: window.BoundedWindow = WINDOW,
        pane: PaneInfo = PANE,
    ) -> Iterator[tuple[str, Means]]:
        last_hour = window_end_ms(win) - HOUR_MS
        hourly = _latest_per_hour(element[1])
        # Nothing to report outside the range, or for an hour without data of its own.
        if (self.emit is None or self.emit[0] <= last_hour < self.emit[1]) and last_hour in hourly:
            yield from self._period(hourly, last_hour, window_start_ms(win), pane.index)

    def _period(
        self, hourly: dict[int, Means], last_hour: int, first_hour: int, pane: int
    ) -> Iterator[tuple[str, Means]]:
        rows = tuple(sorted({row for m in hourly.values() for row in m.rows}))
        position = {row: i for i, row in enumerate(rows)}
        stack = np.full((self.hours, len(rows), len(self.columns)), np.nan)
        for m in hourly.values():
            at = [position[row] for row in m.rows]
            stack[(m.hour_ms - first_hour) // HOUR_MS, at] = m.means[:, self.columns]
        valid = ~np.isnan(stack)
        count = valid.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            period = np.where(count > 0, np.where(valid, stack, 0.0).sum(axis=0) / count, np.nan)
        period[(count < self.needed) | ~valid[-1]] = np.nan
        means = np.full((len(rows), len(POLLUTANT_NAMES)), np.nan)
        means[:, self.columns] = period
        keep = ~np.isnan(period).all(axis=1)
        if keep.any():
            kept = tuple(rows[i] for i in np.flatnonzero(keep).tolist())
            yield _KEY, Means(last_hour, kept, means[keep], pane, self.hours)


class ComputeAQI(beam.DoFn):
    """(key, period `Means` of one hour) -> the hour's `aqi_1h` points (step 4)."""

    def process(self, element: tuple[str, Iterable[Means]], win: window.BoundedWindow = WINDOW) -> Iterator[PointBatch]:
        # One element per averaging period and firing; of each period keep the latest firing.
        latest: dict[int, Means] = {}
        for m in element[1]:
            if m.period_hours not in latest or m.pane > latest[m.period_hours].pane:
                latest[m.period_hours] = m
        merged: dict[Area, dict[str, float]] = {}
        for m in latest.values():
            for row, values in zip(m.rows, m.means.tolist(), strict=True):
                concentrations = merged.setdefault(row, {})
                for name, value in zip(POLLUTANT_NAMES, values, strict=True):
                    if value == value:  # not NaN
                        concentrations[name] = value
        rows = sorted(merged)
        results = [thai_aqi(merged[row]) for row in rows]
        fields: dict[str, np.ndarray] = {
            name: np.full(len(rows), np.nan)
            for name in ("aqi", "band", *(pollutant_aqi_field(p) for p in POLLUTANT_NAMES))
        }
        dominant = np.full(len(rows), None, dtype=object)
        for i, result in enumerate(results):
            if result is None:
                continue
            fields["aqi"][i] = result.aqi
            fields["band"][i] = result.band.number
            dominant[i] = result.dominant
            for name, value in result.sub_indices.items():
                fields[pollutant_aqi_field(name)][i] = value
        if rows:
            yield PointBatch.of(
                AQI_MEASUREMENT,
                ROLLUP_TAGS,
                rows,
                np.full(len(rows), window_start_ms(win), dtype=np.int64),
                {**fields, "dominant": dominant},
                integers=frozenset(fields),
            )
