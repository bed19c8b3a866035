"""GroupIntoHours: the readings of an hour, every kind, deduplicated, as one element.

    PCollection[ReadingBatch] -> PCollection[Hour]   (hourly windows)

Concepts: batches split per hour (`timing.stamped_windows`) before `WindowInto`, so an hour
holds one element per segment and kind; hourly event-time `FixedWindows` with the pipelines'
trigger (on time, then a late pane per late element, `ACCUMULATING`); one `GroupByKey` with
a single key, so every kind of an hour meets in one element; optional empty marker batches
that make chosen (kind, hour)s fire even when nothing arrived in them.

The rollups, the AQI and sensor health all start from an hour's deduplicated readings, so
`pipeline run` groups them once and hands the same hours to the three (`run.build`); each of
those composites applied on its own is `GroupIntoHours` followed by its `from_hours()` part.
On Beam's local runners a grouping costs a pickle and an unpickle of every part, trigger
bookkeeping per part and a concatenation and deduplication per window: done once instead of
three times, that was about a fifth of a day's backfill (docs/benchmarks.md).
`Anomalies` groups on its own: it needs the quarter before each hour as well.

An `Hour` is `(start ms, batches)`: one `ReadingBatch` per kind, in kind order, deduplicated
(`ReadingBatch.deduplicated`: one reading per (sensor, ts), sorted by sensor then time), empty
for a kind that only a marker named.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue

from pipelines.batch import ReadingBatch, by_kind, empty_batch
from pipelines.settings import ALLOWED_LATENESS_S
from pipelines.timing import HOUR_MS, WINDOW, ceil_to, floor_to, stamped_windows, window_start_ms

HOUR_S = 3600
# One key: every kind of an hour is grouped together (an hour is the unit of work and of firing).
_KEY = "hour"

Hour = tuple[int, tuple[ReadingBatch, ...]]


class GroupIntoHours(beam.PTransform):
    """Hours of the readings of `kinds` (None: all); `mark=(metrics by kind, (start_ms, end_ms))` makes
    each of those kinds appear in every hour of that range, with an empty batch if nothing arrived.

    `early_firing_s` (streaming only) re-fires an hour that often, in processing time, until it is complete.
    """

    def __init__(
        self,
        allowed_lateness_s: int = ALLOWED_LATENESS_S,
        *,
        kinds: Collection[str] | None = None,
        mark: tuple[Mapping[str, tuple[str, ...]], tuple[int, int]] | None = None,
        early_firing_s: int | None = None,
    ) -> None:
        super().__init__()
        self.allowed_lateness_s = allowed_lateness_s
        self.kinds = None if kinds is None else frozenset(kinds)
        self.mark = mark
        self.early_firing_s = early_firing_s

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        parts = batches | "SplitIntoHours" >> beam.FlatMap(_hour_parts, self.kinds)
        if self.mark is not None:
            metrics, (start, end) = self.mark
            every_hour = [
                (kind, hour)
                for kind in sorted(metrics)
                for hour in range(floor_to(start, HOUR_MS), ceil_to(end, HOUR_MS), HOUR_MS)
            ]
            markers = (
                batches.pipeline
                | "ListHours" >> beam.Create(every_hour)
                | "MarkHours" >> beam.Map(_marker, dict(metrics))
            )
            parts = (parts, markers) | "AddEveryHour" >> beam.Flatten()
        early = None if self.early_firing_s is None else trigger.AfterProcessingTime(self.early_firing_s)
        return (
            parts
            | "WindowIntoHours"
            >> beam.WindowInto(
                window.FixedWindows(HOUR_S),
                trigger=trigger.AfterWatermark(early=early, late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=self.allowed_lateness_s,
            )
            | "GroupByHour" >> beam.GroupByKey()
            | "Deduplicate" >> beam.ParDo(Deduplicate())
        )


def _hour_parts(batch: ReadingBatch, kinds: frozenset[str] | None) -> Iterator[TimestampedValue]:
    if kinds is None or batch.kind in kinds:
        yield from stamped_windows(batch, HOUR_S, key=_KEY)


def _marker(kind_hour: tuple[str, int], metrics: Mapping[str, tuple[str, ...]]) -> TimestampedValue:
    kind, hour_ms = kind_hour
    return TimestampedValue((_KEY, empty_batch(kind, metrics[kind])), hour_ms / 1000)


class Deduplicate(beam.DoFn):
    """(key, parts of one hour) -> `Hour`: per kind, the parts concatenated and deduplicated."""

    def process(
        self, element: tuple[str, Iterable[ReadingBatch]], win: window.BoundedWindow = WINDOW
    ) -> Iterator[Hour]:
        yield window_start_ms(win), tuple(batch.deduplicated() for batch in by_kind(element[1]).values())


def in_hours(hour: Hour, start_ms: int, end_ms: int) -> bool:
    """Whether the hour starts in [start_ms, end_ms) (for `beam.Filter`)."""
    return start_ms <= hour[0] < end_ms
