"""Anomalies: spikes by robust z-score, and a flood gauge rising towards its site's danger level."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.anomalies import Anomalies
from sensors.registry import Registry
from tests.pipelines.conftest import batch_pipeline, collect, to_rows
from tests.pipelines.spooldata import HOUR, MINUTE, T0, batches_of, reading


def test_spike_is_flagged_and_ordinary_variation_is_not(registry: Registry) -> None:
    sensor = registry.sensors["pkt-aq-001"]
    values = [20 + (i * 37 % 11) * 0.3 for i in range(60)]
    values[30] = 200.0
    readings = [reading(sensor, T0 + i * MINUTE, {"pm25": v, "co": 1.0}) for i, v in enumerate(values)]
    with batch_pipeline() as p:
        rows = to_rows(p | beam.Create(batches_of(readings, registry)) | Anomalies(registry))
        found = rows | beam.Map(lambda r: (r[2], dict(r[1])["metric"], dict(r[1])["type"], dict(r[3])["value"]))
        assert_that(found, equal_to([(T0 + 30 * MINUTE, "pm25", "spike", 200.0)]))


def test_rapid_rise_is_seen_across_the_hour_boundary(registry: Registry) -> None:
    """bang-yai-canal: warning 1.6 m, danger 2.2 m, so 0.6 m/h is the limit; the gauge rises at 1.2 m/h.

    The level is 1.0 until minute 50, then rises 0.02 m a minute. Against the reading 15 minutes
    earlier, minute 58 is the first at or over 0.6 m/h (0.16 m in 15 min = 0.64 m/h); minute 60,
    the first of the next hour, is judged against minute 45 of the hour before.
    """
    gauge = registry.sensors["pkt-wl-001"]
    assert gauge.site == "bang-yai-canal"
    levels = {t: 1.0 + 0.02 * max(0, t - 50) for t in range(70)}
    readings = [reading(gauge, T0 + t * MINUTE, {"level": v}) for t, v in levels.items()]
    with batch_pipeline() as p:
        rows = collect(to_rows(p | beam.Create(batches_of(readings, registry)) | Anomalies(registry)))
    rises = sorted((r[2], dict(r[3])) for r in rows if ("type", "rapid_rise") in r[1])
    assert [t for t, _ in rises] == [T0 + t * MINUTE for t in range(58, 70)]
    for t, fields in rises:
        minute = (t - T0) // MINUTE
        assert fields["score"] == pytest.approx((levels[minute] - levels[minute - 15]) * 4)
        assert fields["threshold"] == pytest.approx(0.6)
        assert fields["value"] == levels[minute]


def test_emit_range_keeps_only_readings_in_it(registry: Registry) -> None:
    sensor = registry.sensors["pkt-aq-001"]
    values = [20 + (i * 37 % 11) * 0.3 for i in range(120)]
    values[30] = values[90] = 200.0
    readings = [reading(sensor, T0 + i * MINUTE, {"pm25": v}) for i, v in enumerate(values)]
    with batch_pipeline() as p:
        rows = to_rows(
            p | beam.Create(batches_of(readings, registry)) | Anomalies(registry, emit=(T0 + HOUR, T0 + 2 * HOUR))
        )
        assert_that(rows | beam.Map(lambda r: r[2]), equal_to([T0 + 90 * MINUTE]))
