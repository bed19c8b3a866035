"""WindowedStats: mean, min, max and count of every metric per minute and per hour, at every level.

    PCollection[ReadingBatch] -> PCollection[PointBatch]   (`{kind}_1m`, `{kind}_1h`)

Concepts: event-time `FixedWindows` of 1 minute and 1 hour; one element per
batch part and window rather than per reading (the batch is split by window
before `WindowInto`, so Beam handles a few elements per window); `GroupByKey`
per kind; `ACCUMULATING` late panes, so a late reading makes the whole window
be recomputed and rewritten, never added twice.

Each window of a kind gives one `PointBatch` with a row per sensor that
reported and one per district, city and super-cluster those sensors are in
(`pipelines.areas`). A row has, for every metric with readings in the window,
`{metric}_mean`, `_min`, `_max` (floats) and `_count` (integer). An area's
figures are over all readings of its sensors: the count is readings, the mean
is weighted by readings. A reading counts once per (sensor_id, ts) however
often it was delivered. Point time is the window start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.transforms import trigger, window

from pipelines.areas import levels_of
from pipelines.batch import ReadingBatch
from pipelines.points import PointBatch
from pipelines.settings import ALLOWED_LATENESS_S
from pipelines.timing import WINDOW, stamped_windows, window_start_ms
from storage.schema import STATS, WINDOWS, rollup_field, rollup_measurement

# Width of each rollup window, by its name in the measurement (`{kind}_{name}`).
WINDOW_SECONDS: dict[str, int] = {"1m": 60, "1h": 3600}
assert set(WINDOW_SECONDS) == set(WINDOWS)


class WindowedStats(beam.PTransform):
    """Rollups of every kind for each window size in `windows` (default both, 1m and 1h)."""

    def __init__(self, windows: Sequence[str] = WINDOWS, allowed_lateness_s: int = ALLOWED_LATENESS_S) -> None:
        super().__init__()
        unknown = [w for w in windows if w not in WINDOW_SECONDS]
        if unknown:
            raise ValueError(f"unknown rollup window {', '.join(unknown)}; known: {', '.join(WINDOW_SECONDS)}")
        self.windows = tuple(windows)
        self.allowed_lateness_s = allowed_lateness_s

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        branches = []
        for name in self.windows:
            seconds = WINDOW_SECONDS[name]
            branches.append(
                batches
                | f"SplitInto{name}" >> beam.FlatMap(stamped_windows, seconds)
                | f"WindowInto{name}"
                >> beam.WindowInto(
                    window.FixedWindows(seconds),
                    trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=self.allowed_lateness_s,
                )
                | f"GroupBy{name}" >> beam.GroupByKey()
                | f"Summarise{name}" >> beam.ParDo(SummariseWindow(name))
                # Points carry their window in their time; one global window lets both sizes flatten together.
                | f"Unwindow{name}" >> beam.WindowInto(window.GlobalWindows())
            )
        return tuple(branches) | "MergeWindows" >> beam.Flatten()


class SummariseWindow(beam.DoFn):
    """(kind, parts of one window) -> the window's rollup points."""

    def __init__(self, window_name: str) -> None:
        self.window_name = window_name

    def process(
        self, element: tuple[str, Iterable[ReadingBatch]], win: window.BoundedWindow = WINDOW
    ) -> Iterator[PointBatch]:
        kind, parts = element
        batch = ReadingBatch.concat(parts).deduplicated()
        if len(batch):
            yield summarise(batch, rollup_measurement(kind, self.window_name), window_start_ms(win))


def summarise(batch: ReadingBatch, measurement: str, time_ms: int) -> PointBatch:
    """Rollup rows of a deduplicated batch (sorted by sensor): every sensor and every area it is in."""
    starts = batch.group_starts()
    present = ~np.isnan(batch.values)
    # Per series of the table (zero / +-inf for series without readings here), then per row.
    shape = (len(batch.series), len(batch.metrics))
    count, total = np.zeros(shape), np.zeros(shape)
    low, high = np.full(shape, np.inf), np.full(shape, -np.inf)
    series = batch.sensor[starts]
    count[series] = np.add.reduceat(present, starts, axis=0)
    total[series] = np.add.reduceat(np.where(present, batch.values, 0.0), starts, axis=0)
    low[series] = np.minimum.reduceat(np.where(present, batch.values, np.inf), starts, axis=0)
    high[series] = np.maximum.reduceat(np.where(present, batch.values, -np.inf), starts, axis=0)
    levels = levels_of(batch.series)
    count = levels.reduce(np.add, count, 0.0)
    total = levels.reduce(np.add, total, 0.0)
    low = levels.reduce(np.minimum, low, np.inf)
    high = levels.reduce(np.maximum, high, -np.inf)
    rows = np.flatnonzero(count.sum(axis=1) > 0)
    count, total, low, high = count[rows], total[rows], low[rows], high[rows]
    has = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = {"mean": total / count, "min": low, "max": high, "count": count}
    fields = {}
    for j, metric in enumerate(batch.metrics):
        if has[:, j].any():
            for stat in STATS:
                fields[rollup_field(metric, stat)] = np.where(has[:, j], stats[stat][:, j], np.nan)
    return PointBatch(
        measurement,
        [levels.rows[i].tags() for i in rows.tolist()],
        np.full(len(rows), time_ms, dtype=np.int64),
        fields,
        integers=frozenset(rollup_field(m, "count") for m in batch.metrics),
    )
