"""SensorHealth: received vs expected, silent sensors and silent hours, stuck values, outliers."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from sensors.reading import Reading
from sensors.registry import Registry
from tests.pipelines.conftest import batch_pipeline, to_rows
from tests.pipelines.spooldata import HOUR, MINUTE, T0, batches_of, reading

WATCHED = ("pkt-wl-001", "pkt-wl-002", "pkt-wl-003")


def sample(registry: Registry) -> list[Reading]:
    busy, half = registry.sensors["pkt-wl-001"], registry.sensors["pkt-wl-003"]
    levels = [1.0 + 0.01 * i for i in range(60)]
    levels[20:30] = [1.2] * 10  # stuck: 9 readings repeat the one before
    levels[45] = 9.0  # a spike
    readings = [reading(busy, T0 + i * MINUTE, {"level": v}) for i, v in enumerate(levels)]
    readings.append(reading(busy, T0 + 5 * MINUTE, {"level": levels[5]}, received=T0 + HOUR))  # redelivered
    readings += [reading(half, T0 + i * 2 * MINUTE, {"level": 1.0 + 0.02 * i}) for i in range(30)]
    return readings  # pkt-wl-002 says nothing


def health(received: int, flatline: int, outliers: int) -> dict[str, float]:
    return {
        "received": received,
        "expected": 60,
        "completeness": received / 60,
        "flatline": flatline,
        "outliers": outliers,
    }


def test_every_registry_sensor_gets_every_hour(registry: Registry) -> None:
    from pipelines.sensor_health import SensorHealth

    with batch_pipeline() as p:
        rows = to_rows(
            p | beam.Create(batches_of(sample(registry), registry)) | SensorHealth(registry, (T0, T0 + 2 * HOUR))
        )
        watched = rows | beam.Filter(lambda r: dict(r[1])["sensor_id"] in WATCHED)
        found = watched | beam.Map(lambda r: (r[2], dict(r[1])["sensor_id"], dict(r[3])))
        assert_that(
            found,
            equal_to(
                [
                    (T0, "pkt-wl-001", health(60, 9, 1)),
                    (T0, "pkt-wl-002", health(0, 0, 0)),
                    (T0, "pkt-wl-003", health(30, 0, 0)),
                    *[(T0 + HOUR, s, health(0, 0, 0)) for s in WATCHED],  # nothing at all arrived in this hour
                ]
            ),
            label="CheckWatched",
        )
        per_hour = rows | beam.Map(lambda r: r[2]) | beam.combiners.Count.PerElement()
        assert_that(
            per_hour,
            equal_to([(T0, len(registry.sensors)), (T0 + HOUR, len(registry.sensors))]),
            label="CheckEverySensor",
        )
