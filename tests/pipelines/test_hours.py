"""GroupIntoHours: the hour every pipeline starts from; and the shortcuts it relies on."""

from __future__ import annotations

import random

import apache_beam as beam
import msgspec
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from pipelines.batch import ReadingBatch, by_kind
from pipelines.robust import _sorted_median, group_median
from sensors.registry import Registry
from tests.pipelines.conftest import batch_pipeline
from tests.pipelines.spooldata import HOUR, T0, batches_of, fleet_readings


def _summary(hour: tuple[int, tuple[ReadingBatch, ...]]) -> tuple[int, tuple[tuple[str, int, bytes], ...]]:
    return hour[0], tuple((b.kind, len(b), b.values.tobytes() + b.ts.tobytes()) for b in hour[1])


def test_an_hour_holds_each_kind_once_deduplicated_across_segments(registry: Registry) -> None:
    """Parts of one hour from several segments, with redeliveries, meet as one batch per kind."""
    from pipelines.hours import GroupIntoHours

    rng = random.Random(5)
    sensors = list(registry.sensors.values())[::20]
    readings = fleet_readings(registry, sensors, T0, T0 + 2 * HOUR, rng)
    redelivered = [msgspec.structs.replace(r, received=r.received + 60_000) for r in rng.sample(readings, 200)]
    segments = [readings[::2], readings[1::2] + redelivered]
    expected = []
    for hour in (T0, T0 + HOUR):
        every = [b.between(hour, hour + HOUR) for segment in segments for b in batches_of(segment, registry)]
        kinds = by_kind(b for b in every if len(b))
        expected.append(_summary((hour, tuple(batch.deduplicated() for batch in kinds.values()))))
    with batch_pipeline() as p:
        parts = [b for segment in segments for b in batches_of(segment, registry)]
        hours = p | beam.Create(parts) | GroupIntoHours()
        assert_that(hours | beam.Map(_summary), equal_to(expected))


def test_a_deduplicated_batch_is_its_own_deduplication(registry: Registry) -> None:
    readings = fleet_readings(registry, list(registry.sensors.values())[:40], T0, T0 + HOUR, random.Random(2))
    for batch in batches_of(readings + readings[:50], registry):
        once = batch.deduplicated()
        assert once.deduplicated() is once
        assert len(once) < len(batch) or once is batch


def test_medians_of_all_columns_at_once_equal_a_sort_per_column() -> None:
    """The table path and the sort path (taken when one group is far longer) give the same medians."""
    rng = np.random.default_rng(0)
    for n, groups in ((5_000, 60), (20_000, 3_000), (7, 3), (0, 4)):
        group = np.sort(rng.integers(0, groups, n))
        group[: n // 2] = 0  # one long group: the second case takes the sort path
        values = rng.normal(size=(n, 3))
        values[rng.random((n, 3)) < 0.2] = np.nan
        by_column = np.stack([_sorted_median(values[:, j], group, groups) for j in range(3)], axis=1)
        assert np.array_equal(group_median(values, group, groups), by_column, equal_nan=True)
