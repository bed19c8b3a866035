"""GroupIntoHours: the readings of an hour, every kind, deduplicated, as one element.

    PCollection[ReadingBatch] -> PCollection[Hour]   (hourly windows)

Concepts: batches split per hour (`ReadingBatch.windows`) before `WindowInto`, so an hour
holds one element per segment and kind; hourly event-time `FixedWindows` with the pipelines'
trigger (on time, then a late pane per late element, `ACCUMULATING`); one `GroupByKey` with
a single key, so every kind of an hour meets in one element. Nothing else is flattened into
the readings: on the local runner a `Flatten` of outputs of different stages copies every
reading once more (sensor health names its silent hours by other means).

The rollups, the AQI, sensor health and the anomalies all start from an hour's deduplicated
readings, so `pipeline run` groups them once and hands the same hours to the four
(`run.build`); each composite applied on its own is `GroupIntoHours` followed by its
`from_hours()` part.
On Beam's local runners a grouping costs a pickle and an unpickle of every part, trigger
bookkeeping per part and a concatenation and deduplication per window: done once instead of
four times (docs/benchmarks.md).

An `Hour` is `(start_ms, batches, before)`: one `ReadingBatch` per kind, in kind order,
deduplicated (`ReadingBatch.deduplicated`: one reading per (sensor, ts), sorted by sensor
then time); `before` likewise for the last `before_s` of the hour before, which the split
also stamps into the next hour (the anomalies' rate of rise looks back 15 minutes), so that
one grouping serves all four pipelines.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue

from pipelines.batch import ReadingBatch, by_kind
from pipelines.settings import ALLOWED_LATENESS_S
from pipelines.timing import HOUR_MS, WINDOW, window_start_ms

HOUR_S = 3600
# One key: every kind of an hour is grouped together (an hour is the unit of work and of firing).
_KEY = "hour"


class Hour(NamedTuple):
    """An hour's readings: one deduplicated batch per kind, in kind order; and, when asked for, the
    last `before_s` of the hour before, per kind likewise (the anomalies' rate of rise looks back)."""

    start_ms: int
    batches: tuple[ReadingBatch, ...]
    before: tuple[ReadingBatch, ...] = ()


class GroupIntoHours(beam.PTransform):
    """Hours of the readings of `kinds` (None: all), each with the last `before_s` seconds of the hour before.

    `early_firing_s` (streaming only) re-fires an hour that often, in processing time, until it is complete.
    """

    def __init__(
        self,
        allowed_lateness_s: int = ALLOWED_LATENESS_S,
        *,
        kinds: Collection[str] | None = None,
        before_s: int = 0,
        early_firing_s: int | None = None,
    ) -> None:
        super().__init__()
        self.allowed_lateness_s = allowed_lateness_s
        self.kinds = None if kinds is None else frozenset(kinds)
        self.before_s = before_s
        self.early_firing_s = early_firing_s

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        parts = batches | "SplitIntoHours" >> beam.FlatMap(_hour_parts, self.kinds, self.before_s * 1000)
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


def _hour_parts(batch: ReadingBatch, kinds: frozenset[str] | None, before_ms: int) -> Iterator[TimestampedValue]:
    """(key, (False, part)) stamped with its hour; with `before_ms`, the part's last `before_ms` also as
    (key, (True, tail)) stamped with the next hour, so one grouping serves both."""
    if kinds is not None and batch.kind not in kinds:
        return
    for start_ms, part in batch.windows(HOUR_MS):
        yield TimestampedValue((_KEY, (False, part)), start_ms / 1000)
        if before_ms:
            end_ms = start_ms + HOUR_MS
            tail = part.between(end_ms - before_ms, end_ms)
            if len(tail):
                yield TimestampedValue((_KEY, (True, tail)), end_ms / 1000)


class Deduplicate(beam.DoFn):
    """(key, parts of one hour) -> `Hour`: per kind, the parts concatenated and deduplicated."""

    def process(
        self, element: tuple[str, Iterable[tuple[bool, ReadingBatch]]], win: window.BoundedWindow = WINDOW
    ) -> Iterator[Hour]:
        own: list[ReadingBatch] = []
        before: list[ReadingBatch] = []
        for is_before, part in element[1]:
            (before if is_before else own).append(part)
        yield Hour(window_start_ms(win), _deduplicated(own), _deduplicated(before))


def _deduplicated(parts: list[ReadingBatch]) -> tuple[ReadingBatch, ...]:
    return tuple(batch.deduplicated() for batch in by_kind(parts).values())


def in_hours(hour: Hour, start_ms: int, end_ms: int) -> bool:
    """Whether the hour starts in [start_ms, end_ms) (for `beam.Filter`)."""
    return start_ms <= hour.start_ms < end_ms
