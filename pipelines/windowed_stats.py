"""WindowedStats: mean, min, max, count and sum of every metric per minute and per hour, at every level.

    PCollection[ReadingBatch] -> PCollection[PointBatch]   (`{kind}_1m`, `{kind}_1h`)

Concepts: event-time `FixedWindows` of an hour, holding one element per batch
part (segment and kind) rather than one per reading; minute rollups computed
inside the hour window (a minute lies wholly inside its hour, so the hour's
readings hold every minute's); one group per hour with every kind in it
(`pipelines.hours.GroupIntoHours`, which `pipeline run` shares with the other
pipelines); early
firings every minute of processing time and `ACCUMULATING` late panes, so in
streaming the minutes appear as they fill and a late reading makes its windows
be recomputed and rewritten, never added twice.

Why not 60 Beam windows a hour: on the local runners every window and every
element costs Beam bookkeeping (timers, state, a pickle and an unpickle at
each shuffle) that outweighs the arithmetic; one hour window per kind and
segment, and one vectorised pass that groups by (sensor, minute), is several
times faster (docs/benchmarks.md) and gives the same numbers.

Each window gives, per kind, a row per sensor that reported and one per
district, city and super-cluster those sensors are in (`pipelines.areas`),
except the levels no reader needs (`storage.schema.rollup_levels`: no sensor
row in a window no longer than the kind's reporting interval, raw serves it).
A row has, for every metric with readings in the window, `{metric}_mean`,
`_min`, `_max` (floats), `_count` (integer) and, for a metric whose registry
`aggregate` is `sum` only, `_sum` (float). An area's figures are over all
readings of its sensors: the count is readings, the mean is weighted by
readings, the sum is of every reading (for an amount since the previous
reading, like rain, the total of the window). A reading counts once per
(sensor_id, ts) however often it was delivered. Point time is the window start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import window

from pipelines.areas import levels_of
from pipelines.batch import ReadingBatch, by_kind
from pipelines.hours import GroupIntoHours
from pipelines.points import PointBatch
from pipelines.settings import ALLOWED_LATENESS_S
from pipelines.timing import WINDOW, window_start_ms
from sensors.registry import Registry
from storage.schema import (
    LEVELS,
    ROLLUP_TAGS,
    STATS,
    WINDOW_SECONDS,
    WINDOWS,
    rollup_field,
    rollup_levels,
    rollup_measurement,
    rollup_stats,
)

# In streaming, re-emit an hour's minutes this often (processing time) until the watermark passes it.
EARLY_FIRING_S = 60


@dataclass(frozen=True)
class Stored:
    """What the rollups of one kind hold (`storage.schema`): levels per window, statistics per metric."""

    levels: Mapping[str, tuple[str, ...]]
    stats: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, registry: Registry) -> dict[str, Stored]:
        """Per kind id, from its registry `interval_s` and its metrics' `aggregate`."""
        return {
            kind.id: cls(
                {w: rollup_levels(w, kind.interval_s) for w in WINDOWS},
                {m.name: rollup_stats(m.aggregate) for m in kind.metrics},
            )
            for kind in registry.kinds.values()
        }


class WindowedStats(beam.PTransform):
    """Rollups of every kind of `registry` for each window size in `windows` (default both, 1m and 1h)."""

    def __init__(
        self, registry: Registry, windows: Sequence[str] = WINDOWS, allowed_lateness_s: int = ALLOWED_LATENESS_S
    ) -> None:
        super().__init__()
        unknown = [w for w in windows if w not in WINDOW_SECONDS]
        if unknown:
            raise ValueError(f"unknown rollup window {', '.join(unknown)}; known: {', '.join(WINDOW_SECONDS)}")
        self.windows = tuple(windows)
        self.stored = Stored.of(registry)
        self.allowed_lateness_s = allowed_lateness_s

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        # Early firings need a processing-time clock: streaming only (a bounded run fires each hour once, complete).
        streaming = batches.pipeline.options.view_as(StandardOptions).streaming
        return (
            batches
            | "GroupIntoHours"
            >> GroupIntoHours(self.allowed_lateness_s, early_firing_s=EARLY_FIRING_S if streaming else None)
            | "SummariseHours" >> self.from_hours()
        )

    def from_hours(self) -> beam.PTransform:
        """PCollection[Hour] (`GroupIntoHours`) -> PCollection[PointBatch]: the rollups of each hour."""
        return beam.ParDo(SummariseHour(self.windows, self.stored))


class SummariseHour(beam.DoFn):
    """(key, parts of one hour) -> per kind, a `PointBatch` for each window size in it.

    The parts may be an `Hour` of `GroupIntoHours` (one deduplicated batch per kind, keyed by its start).
    """

    def __init__(self, windows: Sequence[str], stored: Mapping[str, Stored]) -> None:
        self.windows = tuple(windows)
        self.stored = dict(stored)

    def process(
        self, element: tuple[object, Iterable[ReadingBatch]], win: window.BoundedWindow = WINDOW
    ) -> Iterator[PointBatch]:
        start = window_start_ms(win)
        for kind, batch in by_kind(element[1]).items():
            batch = batch.deduplicated()
            stored = self.stored.get(kind)
            if len(batch):
                for name in self.windows:
                    yield summarise(
                        batch,
                        rollup_measurement(kind, name),
                        start,
                        WINDOW_SECONDS[name] * 1000,
                        levels=stored.levels[name] if stored else LEVELS,
                        stats=stored.stats if stored else None,
                    )


def summarise(
    batch: ReadingBatch,
    measurement: str,
    start_ms: int,
    width_ms: int,
    levels: Sequence[str] = LEVELS,
    stats: Mapping[str, Sequence[str]] | None = None,
) -> PointBatch:
    """Rollup rows of windows of `width_ms` from `start_ms`, for a deduplicated batch (sorted by sensor, ts).

    Readings are grouped by (sensor, window), then those groups by (row, window)
    for the row of every level; all windows of the batch in one pass. Only rows
    of `levels` are kept, and per metric the statistics `stats` names (default all).
    """
    slot = (batch.ts - start_ms) // width_ms
    slots = int(slot.max()) + 1
    # Sorted by sensor then time, so (sensor, window) only grows: groups are runs.
    group = batch.sensor.astype(np.int64) * slots + slot
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    present = ~np.isnan(batch.values)
    per_group = (
        np.add.reduceat(present, starts, axis=0).astype(np.float64),
        np.add.reduceat(np.where(present, batch.values, 0.0), starts, axis=0),
        np.minimum.reduceat(np.where(present, batch.values, np.inf), starts, axis=0),
        np.maximum.reduceat(np.where(present, batch.values, -np.inf), starts, axis=0),
    )
    table = levels_of(batch.series)
    wanted = [i for i, level in enumerate(LEVELS) if level in levels]
    # Each (sensor, window) group counts towards its row at every wanted level: cell = row * slots + window.
    cells = (table.member[batch.sensor[starts]][:, wanted] * slots + slot[starts][:, None]).T.ravel()
    order = np.argsort(cells, kind="stable")
    ordered = cells[order]
    firsts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    source = np.tile(np.arange(len(starts)), len(wanted))[order]
    count, total, low, high = (
        ufunc.reduceat(stat[source], firsts, axis=0)
        for ufunc, stat in zip((np.add, np.add, np.minimum, np.maximum), per_group, strict=True)
    )
    cell = ordered[firsts]
    has = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        values = {"mean": total / count, "min": low, "max": high, "count": count, "sum": total}
    fields = {}
    for j, metric in enumerate(batch.metrics):
        if has[:, j].any():
            for stat in STATS if stats is None else stats.get(metric, STATS):
                fields[rollup_field(metric, stat)] = np.where(has[:, j], values[stat][:, j], np.nan)
    return PointBatch(
        measurement,
        ROLLUP_TAGS,
        table.packed,
        start_ms + (cell % slots) * width_ms,
        fields,
        integers=frozenset(rollup_field(m, "count") for m in batch.metrics),
        tag_index=cell // slots,
    )
