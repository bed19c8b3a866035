"""The pipelines: rollups, Thai AQI, sensor health and anomalies, from the spool into InfluxDB.

    ReadSpool -> GroupIntoHours -> WindowedStats -> WriteToInflux
                                -> ThaiAQI       -> WriteToInflux
                                -> SensorHealth  -> WriteToInflux
              -> Anomalies                       -> WriteToInflux

(the rollups, the AQI and health share one grouping into hours, `pipelines.hours`).

A bounded run covers whole hours `[start, end)`: a range given with minutes is
widened to the hours around it, so no window is cut by the range and written
with part of its data over a complete value. It reads 23 h more before the
start for the AQI's 24 h means (and 15 min for the rate of rise), and writes
only the hours in range. Every point is a function of the readings in the
spool alone, so re-running a range rewrites exactly the same points: a
backfill after late data is safe.

`follow` runs the same pipelines again and again: each cycle takes the segments
closed since the checkpoint, re-aggregates the hours they touch (back to the
allowed lateness before the previous watermark), and the clock hours that
ended meanwhile for sensor health; writes only the rows of the windows its new
readings are in, takes the AQI's look-back from the hourly means kept between
cycles (`pipelines.incremental`); then records its progress
(`pipelines.checkpoint`).

EXAMPLES (the first is what `smartcity pipeline ...` does by default)

    smartcity pipeline run --from 2025-11-25 --to 2025-11-26
    smartcity pipeline rollup --from 2025-11-25T10:00+07:00 --to 2025-11-25T18:00+07:00 \\
        --runner=FnApiRunner --direct_running_mode=multi_processing --direct_num_workers=2
    smartcity pipeline aqi --from 2025-11-25 --to 2025-11-26 \\
        --runner=PortableRunner --job_endpoint=localhost:8099 --environment_type=LOOPBACK
    smartcity pipeline run --follow
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState

from pipelines import anomalies, thai_aqi
from pipelines.anomalies import Anomalies
from pipelines.batch import ReadingBatch
from pipelines.columns import SegmentDecoder, load_segment, metrics_by_kind, prune_cache
from pipelines.hours import GroupIntoHours, in_hours
from pipelines.incremental import AqiHours, Incremental, KeepTouched, Touched, load_exported
from pipelines.options import beam_options
from pipelines.read_spool import ReadSpool
from pipelines.sensor_health import SensorHealth
from pipelines.settings import PIPELINES, PipelineSettings
from pipelines.thai_aqi import ThaiAQI
from pipelines.timing import HOUR_MS, ceil_to, floor_to
from pipelines.windowed_stats import WindowedStats
from pipelines.write_to_influx import WriteToInflux
from sensors.checkpoint import Checkpoint
from sensors.errors import SmartcityError
from sensors.registry import Registry
from sensors.spool import READINGS, SegmentInfo, closed_segments
from storage.errors import StorageError
from storage.query import QueryClient, ident, regex
from storage.schema import ANOMALY_MEASUREMENT
from storage.settings import InfluxSettings

logger = logging.getLogger(__name__)

# Longest single run: a day of the fleet is a few hundred MB of columns on a local runner.
SLICE_HOURS = 24
# Longest wait between retries of a follow cycle that InfluxDB failed.
FOLLOW_RETRY_MAX_S = 60.0


class PipelineRunError(SmartcityError):
    """A pipeline run did not finish, or was asked for an empty range."""


@dataclass(frozen=True)
class Plan:
    """What one run computes: `pipelines` over whole hours [start_ms, end_ms), AQI hours up to `aqi_end_ms`."""

    pipelines: tuple[str, ...]
    start_ms: int
    end_ms: int
    aqi_end_ms: int
    # False when the AQI's hours outside [start, end) come from a follow cycle's state, not the spool.
    aqi_lookback: bool = True

    @classmethod
    def bounded(cls, pipelines: Sequence[str], start_ms: int, end_ms: int) -> Plan:
        """The plan of a bounded run, widened to whole hours."""
        unknown = [p for p in pipelines if p not in PIPELINES]
        if unknown:
            raise PipelineRunError(f"unknown pipeline {unknown[0]!r} (known: {', '.join(PIPELINES)})")
        start, end = floor_to(start_ms, HOUR_MS), ceil_to(end_ms, HOUR_MS)
        if end <= start:
            raise PipelineRunError("the range is empty: --to must be after --from")
        return cls(tuple(pipelines), start, end, end)

    @property
    def read_range(self) -> tuple[int, int]:
        """The readings the plan needs: its hours, plus the look-back of the AQI and of the rate of rise."""
        aqi = "aqi" in self.pipelines and self.aqi_lookback
        lookback = max(
            thai_aqi.LOOKBACK_MS if aqi else 0,
            anomalies.LOOKBACK_MS if "anomalies" in self.pipelines else 0,
        )
        end = max(self.end_ms, self.aqi_end_ms) if aqi else self.end_ms
        return self.start_ms - lookback, end


@dataclass
class RunReport:
    """What a run did, from the pipeline's counters."""

    plan: Plan
    seconds: float
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def readings(self) -> int:
        return self.counters.get("readings", 0)

    @property
    def points_written(self) -> int:
        return self.counters.get("points_written", 0)


def build(
    pipeline: beam.Pipeline,
    plan: Plan,
    settings: PipelineSettings,
    registry: Registry,
    skipped: list[str] | None = None,
    incremental: Incremental | None = None,
) -> dict[str, beam.PCollection]:
    """Apply the plan's transforms; returns each pipeline's PCollection[PointBatch], by name.

    With `incremental` (a follow cycle) the AQI takes the hours it does not read from its
    `aqi_prior` and exports the hourly means it computes.

    The outputs are not flattened into one: a Flatten of outputs of different
    stages makes the local runner copy every point batch between stages, while
    a sink applied to each output runs fused with the step that made it.
    """
    read_start, read_end = plan.read_range
    readings = pipeline | "ReadSpool" >> ReadSpool(
        settings.spool_root, registry, read_start, read_end, cache_dir=settings.cache_dir, skipped=skipped
    )
    lateness = settings.allowed_lateness_s
    in_range = (plan.start_ms, plan.end_ms)
    prior = incremental.aqi_prior if incremental is not None else None
    aqi = ThaiAQI(
        registry,
        hours=(plan.start_ms, plan.aqi_end_ms),
        allowed_lateness_s=lateness,
        prior=prior or (),
        export=incremental.aqi_export if incremental is not None else None,
    )
    rollup = WindowedStats(registry, allowed_lateness_s=lateness)
    health = SensorHealth(registry, hours=in_range, allowed_lateness_s=lateness)
    rises = Anomalies(registry, emit=in_range, allowed_lateness_s=lateness)
    # The four pipelines share one grouping of the readings into hours (`pipelines.hours`), each hour
    # with the quarter before it for the anomalies; each takes the hours it needs: the range, and for
    # the AQI also its look-back and the hours after the range whose averaging periods hold it.
    kinds = frozenset(thai_aqi.pollutants_of(registry)) if plan.pipelines == ("aqi",) else None
    before_s = anomalies.RISE_SPAN_S if "anomalies" in plan.pipelines else 0
    hours = readings | "GroupIntoHours" >> GroupIntoHours(lateness, kinds=kinds, before_s=before_s)
    aqi_hours = (read_start, read_end) if plan.aqi_lookback else in_range

    def of_hours(label: str, hours_range: tuple[int, int], transform: beam.PTransform) -> beam.PCollection:
        return hours | f"{label}Hours" >> beam.Filter(in_hours, *hours_range) | label >> transform

    steps = {  # one per pipeline of the catalog (pipelines.settings.CATALOG); a test checks both agree
        "rollup": lambda: of_hours("WindowedStats", in_range, rollup.from_hours()),
        "aqi": lambda: of_hours("ThaiAQI", aqi_hours, aqi.from_hours()),
        "health": lambda: of_hours("SensorHealth", in_range, health.from_hours()),
        "anomalies": lambda: of_hours("Anomalies", in_range, rises.from_hours()),
    }
    return {name: steps[name]() for name in plan.pipelines}


def slices(plan: Plan, hours: int = SLICE_HOURS) -> list[Plan]:
    """The plan cut into runs of at most `hours`, executed one after the other.

    A local runner holds a run's data in memory, so a month is run a day at a
    time. The cut is exact: every window lies within one slice (slices are whole
    hours) and each slice reads its own look-back, so the points are the same.
    A tail of at most half a slice joins the slice before it: on its own it
    would read a day of AQI look-back again for a few hours (a 25 h backfill
    read every reading twice).
    """
    parts, start = [], plan.start_ms
    while start < plan.end_ms:
        end = min(start + hours * HOUR_MS, plan.end_ms)
        if plan.end_ms - end <= hours * HOUR_MS // 2:
            end = plan.end_ms
        parts.append(Plan(plan.pipelines, start, end, end if end < plan.end_ms else plan.aqi_end_ms))
        start = end
    return parts


def run_plan(
    plan: Plan,
    settings: PipelineSettings,
    registry: Registry,
    beam_args: Sequence[str] = (),
    influx: InfluxSettings | None = None,
    incremental: Incremental | None = None,
) -> RunReport:
    """Run the plan on the runner `beam_args` select and write its points; returns its counters.

    With `incremental` (a follow cycle) only the rows it names as touched are written.
    """
    options = beam_options(beam_args)
    started = time.monotonic()
    if "anomalies" in plan.pipelines:
        if incremental is None:
            clear_anomalies(influx or InfluxSettings.from_env(), plan.start_ms, plan.end_ms)
        else:
            clear_sensor_anomalies(influx or InfluxSettings.from_env(), incremental.touched, plan)
    pipeline = beam.Pipeline(options=options)
    skipped: list[str] = []  # segments whose metadata is unreadable
    for name, points in build(pipeline, plan, settings, registry, skipped, incremental).items():
        if incremental is not None:
            points = points | f"Touched{name.title()}" >> beam.ParDo(KeepTouched(incremental.touched_file))
        points | f"Write{name.title()}" >> WriteToInflux(influx)
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise PipelineRunError(f"the pipeline ended in state {state}")
    counters: dict[str, int] = {"bad_metadata": len(skipped)} if skipped else {}
    for counter in result.metrics().query(MetricsFilter()).get("counters", []):
        name = counter.key.metric.name
        counters[name] = counters.get(name, 0) + int(counter.committed or counter.attempted or 0)
    return RunReport(plan, time.monotonic() - started, counters)


def clear_anomalies(influx: InfluxSettings, start_ms: int, end_ms: int) -> None:
    """Delete the anomaly points of [start_ms, end_ms) before the run writes that range again.

    Rollups, AQI and health points have one timestamp per window, so a rewrite replaces them;
    an anomaly point has the reading's timestamp, so a spike flagged on part of an hour (a follow
    cycle) that the whole hour no longer confirms would otherwise stay forever.
    """
    if influx.token:  # InfluxDB 2.x/3.x accept no InfluxQL DELETE; their points stay until rewritten
        logger.warning("anomalies of earlier runs over this range are not cleared on InfluxDB 2.x/3.x")
        return
    with QueryClient(influx) as client:
        client.execute(
            "DELETE FROM {m} WHERE time >= {start} AND time < {end}",
            {"m": ident(ANOMALY_MEASUREMENT), "start": _utc(start_ms), "end": _utc(end_ms)},
        )


def clear_sensor_anomalies(influx: InfluxSettings, touched: Touched, plan: Plan) -> None:
    """Delete the anomalies of the sensor-hours a follow cycle rewrites (those in the plan's hours)."""
    if influx.token:
        logger.warning("anomalies of earlier runs over this range are not cleared on InfluxDB 2.x/3.x")
        return
    with QueryClient(influx) as client:
        for hour, sensor_ids in touched.anomaly_sensors().items():
            if plan.start_ms <= hour < plan.end_ms:
                client.execute(
                    "DELETE FROM {m} WHERE sensor_id =~ {ids} AND time >= {start} AND time < {end}",
                    {
                        "m": ident(ANOMALY_MEASUREMENT),
                        "ids": regex("^(" + "|".join(re.escape(s) for s in sensor_ids) + ")$"),
                        "start": _utc(hour),
                        "end": _utc(hour + HOUR_MS),
                    },
                )


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def spool_extent(settings: PipelineSettings) -> tuple[int, int] | None:
    """The event-time range [first, last] of the closed segments, or None if there is none."""
    segments = [s for s in closed_segments(settings.spool_root, READINGS) if s.min_ts is not None]
    if not segments:
        return None
    return min(s.min_ts for s in segments if s.min_ts is not None), max(s.max_ts or 0 for s in segments)


def plan_cycle(
    new: Sequence[SegmentInfo], checkpoint: Checkpoint, now_ms: int, lateness_ms: int
) -> tuple[Plan | None, int]:
    """The plan of a follow cycle over `new` segments, and how many of their readings are too late to count.

    Data hours: those the new segments touch (and the next one where a reading may be the reference
    of a rate of rise, up to the watermark), but none whose window closed (ended more than
    `lateness_ms` before the previous watermark). Clock hours: those that ended since health was
    last written (at most `lateness_ms` back), so silent hours get their health points too.
    """
    spans = [(s.min_ts, s.max_ts, s.count) for s in new if s.min_ts is not None and s.max_ts is not None]
    clock = floor_to(now_ms, HOUR_MS)
    too_late = 0
    start = end = None
    watermark = max([checkpoint.watermark_ms or 0, *(hi for _, hi, _ in spans)])
    if spans:
        start = min(floor_to(lo, HOUR_MS) for lo, _, _ in spans)
        end = max(ceil_to(min(hi + anomalies.LOOKBACK_MS, watermark) + 1, HOUR_MS) for _, hi, _ in spans)
        if checkpoint.watermark_ms is not None:
            closed = floor_to(checkpoint.watermark_ms - lateness_ms, HOUR_MS)
            too_late = sum(count for _, hi, count in spans if hi < closed)
            start = max(start, closed)
    pipelines = PIPELINES if spans and start is not None and end is not None and start < end else ("health",)
    if pipelines == ("health",):
        start = end = None
    if checkpoint.hours_done_ms is not None and clock > checkpoint.hours_done_ms:
        since = max(checkpoint.hours_done_ms, clock - ceil_to(lateness_ms, HOUR_MS))
        start = since if start is None else min(start, since)
        end = clock if end is None else max(end, clock)
    if start is None or end is None or start >= end:
        return None, too_late
    aqi_end = end
    if "aqi" in pipelines:
        aqi_end = max(end, min(end + thai_aqi.LOOKBACK_MS, ceil_to(watermark + 1, HOUR_MS)))
    return Plan(pipelines, start, end, aqi_end), too_late


def run_cycle(
    plan: Plan,
    fresh: Sequence[ReadingBatch],
    settings: PipelineSettings,
    registry: Registry,
    beam_args: Sequence[str],
    influx: InfluxSettings | None,
    state: AqiHours,
    keep_from_ms: int,
) -> list[RunReport]:
    """Run a follow cycle's plan, slice by slice, writing the rows its `fresh` readings touch.

    A slice whose AQI look-back is all in `state` reads only its own hours and gets the others from
    there; otherwise it reads the look-back from the spool, and `state` is complete from then on. The
    hourly means each slice computes go into `state` (hours before `keep_from_ms` are dropped).
    """
    touched = Touched.of(fresh, registry, thai_aqi.pollutants_of(registry))
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    export = Path(tempfile.mkdtemp(prefix=".aqi-hours-", dir=settings.state_dir))
    reports = []
    try:
        touched_file = touched.save(export / "touched.pickle")
        for part in slices(plan):
            prior = None
            if "aqi" in part.pipelines and state.covers(part.start_ms - thai_aqi.LOOKBACK_MS):
                part = replace(part, aqi_lookback=False)
                prior = state.prior(part.start_ms - thai_aqi.LOOKBACK_MS, part.aqi_end_ms, (part.start_ms, part.end_ms))
            reports.append(
                run_plan(part, settings, registry, beam_args, influx, Incremental(touched, prior, export, touched_file))
            )
            if "aqi" in part.pipelines:
                since = None if prior is not None else part.start_ms - thai_aqi.LOOKBACK_MS
                state.update(load_exported(export), since, keep_from_ms)
                for path in export.glob("*.pkl"):
                    path.unlink()
    finally:
        shutil.rmtree(export, ignore_errors=True)
    return reports


def follow(
    settings: PipelineSettings,
    registry: Registry,
    beam_args: Sequence[str] = (),
    influx: InfluxSettings | None = None,
    *,
    stop: threading.Event,
    on_report: Callable[[RunReport], None] = lambda _: None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run cycles until `stop` is set: new closed segments and ended hours in, points out, checkpoint saved.

    Per cycle: the new readings name the rows to write (`Touched`); the AQI's hourly means of the
    hours a slice does not read come from `AqiHours` (saved next to the checkpoint, before it).
    A cycle that InfluxDB fails (down, full, refusing) is retried with back-off from the same
    checkpoint and saved state, so an outage longer than the writer's retries pauses the pipelines
    rather than stopping them.
    """
    checkpoint = Checkpoint.load(settings.checkpoint_path)
    state = _saved_aqi_hours(settings)
    decoder = SegmentDecoder(metrics_by_kind(registry))
    if checkpoint.hours_done_ms is None:  # health of clock hours starts now; earlier hours come from data
        checkpoint.hours_done_ms = floor_to(int(clock() * 1000), HOUR_MS)
    failures = 0
    while not stop.is_set():
        try:
            _follow_cycle(settings, registry, beam_args, influx, checkpoint, state, decoder, on_report, clock)
        except StorageError as err:
            failures += 1
            wait_s = min(settings.poll_interval_s * 2**failures, FOLLOW_RETRY_MAX_S)
            logger.error(
                "follow cycle failed: %s; nothing of it is checkpointed, retrying in %.1f s (attempt %d)",
                err,
                wait_s,
                failures,
            )
            state = _saved_aqi_hours(settings)  # the failed cycle may have updated it in memory
            stop.wait(wait_s)
            continue
        if failures:
            logger.info("follow cycle succeeded after %d failed attempts", failures)
            failures = 0
        stop.wait(settings.poll_interval_s)


def _saved_aqi_hours(settings: PipelineSettings) -> AqiHours:
    # The AQI state belongs to the checkpoint: without one (a reset), the first cycle reads its look-back again.
    return AqiHours.load(settings.aqi_state_path) if settings.checkpoint_path.exists() else AqiHours()


def _follow_cycle(
    settings: PipelineSettings,
    registry: Registry,
    beam_args: Sequence[str],
    influx: InfluxSettings | None,
    checkpoint: Checkpoint,
    state: AqiHours,
    decoder: SegmentDecoder,
    on_report: Callable[[RunReport], None],
    clock: Callable[[], float],
) -> None:
    """One cycle of `follow`; `checkpoint` changes (and is saved) only once every point is written."""
    now_ms = int(clock() * 1000)
    segments = closed_segments(settings.spool_root, READINGS)
    new = [s for s in segments if not checkpoint.is_done(s)]
    plan, too_late = plan_cycle(new, checkpoint, now_ms, settings.allowed_lateness_s * 1000)
    if too_late:
        logger.warning(
            "%s readings are older than the allowed lateness and were not re-aggregated; "
            "backfill them with 'smartcity pipeline run --from ... --to ...'",
            too_late,
        )
    if plan is not None:
        fresh = [b for s in new for b in load_segment(s, decoder, settings.cache_dir).batches]
        watermark = max([checkpoint.watermark_ms or 0, *(s.max_ts for s in new if s.max_ts is not None)])
        keep_from = floor_to(watermark - settings.allowed_lateness_s * 1000, HOUR_MS) - thai_aqi.LOOKBACK_MS
        for report in run_cycle(plan, fresh, settings, registry, beam_args, influx, state, keep_from):
            on_report(report)
        state.save(settings.aqi_state_path)  # before the checkpoint: a crash repeats the cycle, never skips it
    if plan is not None or new:
        checkpoint.mark_done(new)
        if plan is not None and "health" in plan.pipelines:
            done = min(plan.end_ms, floor_to(now_ms, HOUR_MS))
            checkpoint.hours_done_ms = max(checkpoint.hours_done_ms or 0, done)
        checkpoint.save(settings.checkpoint_path)
        if settings.cache_dir is not None:
            prune_cache(settings.cache_dir, segments)
