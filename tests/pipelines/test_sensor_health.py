"""SensorHealth: received vs expected, silent sensors and silent hours, stuck values, outliers."""

from __future__ import annotations

import random

import apache_beam as beam
import msgspec
from apache_beam.testing.util import assert_that, equal_to

from sensors.reading import Reading
from sensors.registry import Registry
from tests.pipelines import reference
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
        "seq_gaps": 0,
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


def test_no_sensor_is_silent_in_the_hour_still_under_way(registry: Registry) -> None:
    """At T0 + 1.5 h the second hour has not ended: only sensors that reported have a row in it yet
    (the rows a follow cycle writes, so a bounded run up to now agrees with it)."""
    from pipelines.sensor_health import SensorHealth

    under_way = [reading(registry.sensors["pkt-wl-001"], T0 + HOUR + MINUTE, {"level": 1.0})]
    readings = sample(registry) + under_way
    with batch_pipeline() as p:
        rows = to_rows(
            p
            | beam.Create(batches_of(readings, registry))
            | SensorHealth(registry, (T0, T0 + 2 * HOUR), now_ms=T0 + HOUR + HOUR // 2)
        )
        per_hour = rows | beam.Map(lambda r: (r[2], dict(r[1])["sensor_id"])) | beam.Filter(lambda r: r[0] > T0)
        assert_that(per_hour, equal_to([(T0 + HOUR, "pkt-wl-001")]), label="OnlyTheReportingSensor")
        ended = rows | beam.Filter(lambda r: r[2] == T0) | beam.Map(lambda r: r[2]) | beam.combiners.Count.PerElement()
        assert_that(ended, equal_to([(T0, len(registry.sensors))]), label="EverySensorInTheEndedHour")


def test_the_points_are_the_schemas_health_points(registry: Registry) -> None:
    """Column-wise (`PointBatch`), the pipeline writes what `storage.schema.health_point` defines:
    measurement, tags, field names and their types (integers stay integers in the line protocol)."""
    from pipelines.points import PointBatch
    from pipelines.sensor_health import SensorHealth
    from storage.line_protocol import encode_line
    from storage.schema import SENSOR_TAGS, health_point

    sensor = registry.sensors["pkt-wl-001"]
    tags = dict(zip(SENSOR_TAGS, (sensor.super_cluster, sensor.city, sensor.district, sensor.site, sensor.id,
                                  sensor.vendor), strict=True))  # fmt: skip
    expected = health_point(tags, received=60, expected=60, flatline=9, outliers=1, hour_start_ms=T0)
    with batch_pipeline() as p:
        points = (
            p
            | beam.Create(batches_of(sample(registry), registry))
            | SensorHealth(registry, (T0, T0 + HOUR))
            | beam.FlatMap(PointBatch.points)
            | beam.Filter(lambda point: point.tags.get("sensor_id") == "pkt-wl-001")
            | beam.Map(encode_line)
        )
        assert_that(points, equal_to([encode_line(expected)]))


def numbered(registry: Registry) -> list[Reading]:
    """Readings with `seq`: lost numbers, a restart, a reading without seq, redelivery and disorder."""
    steady, chatty = registry.sensors["pkt-wl-001"], registry.sensors["pkt-wl-003"]
    readings = []
    # One a minute: 10-12 lost (3 gaps); at minute 40 the counter restarts at 0; minute 50 comes without
    # a seq, so its number (10 after the restart) counts as skipped (1 gap).
    for i in range(60):
        if i not in (10, 11, 12):
            r = reading(steady, T0 + i * MINUTE, {"level": 1.0 + 0.01 * i})
            readings.append(msgspec.structs.replace(r, seq=None if i == 50 else (i if i < 40 else i - 40)))
    readings.append(msgspec.structs.replace(readings[20], received=T0 + HOUR))  # redelivered: no gap, no count
    for i in range(90):  # every 2 min over 3 hours from seq 1000, 5 numbers lost in the second hour
        if i not in range(40, 45):
            r = reading(chatty, T0 + i * 2 * MINUTE, {"level": 2.0})
            readings.append(msgspec.structs.replace(r, seq=1000 + i))
    readings.append(msgspec.structs.replace(readings[-1], ts=T0 + 3 * HOUR - 1, seq=1000 + 95))  # 5 lost
    random.Random(7).shuffle(readings)  # arrival order does not matter: gaps are counted in ts order
    return readings


def test_seq_gaps_per_sensor_hour_equal_the_plain_python_reference(registry: Registry) -> None:
    from pipelines.sensor_health import SensorHealth

    readings = numbered(registry)
    want = reference.seq_gaps(readings)
    assert want[("pkt-wl-001", T0)] == 4 and want[("pkt-wl-003", T0 + HOUR)] == 5  # the sample is what it says
    assert want[("pkt-wl-003", T0 + 2 * HOUR)] == 5
    with batch_pipeline() as p:
        rows = to_rows(p | beam.Create(batches_of(readings, registry)) | SensorHealth(registry, (T0, T0 + 3 * HOUR)))
        found = rows | beam.Map(lambda r: ((dict(r[1])["sensor_id"], r[2]), dict(r[3])["seq_gaps"]))
        expected = {(s.id, T0 + h * HOUR): 0 for s in registry.sensors.values() for h in range(3)} | want
        assert_that(found, equal_to(sorted(expected.items())))
