"""ThaiAQI: averaging periods, data coverage, the latest hour, area means; values worked out by hand.

Sub-indices from the PCD table (linear within the band, rounded half up):
pm25 20.0 -> 24/9.9 * 4.9 + 26 = 37.88 -> 38; pm25 25.0 -> 50 (band 2 top);
pm25 30.0 -> 49/12.4 * 4.9 + 51 = 70.36 -> 70;
pm10 60 -> 24/29 * 9 + 26 = 33.45 -> 33; o3 40 -> 24/14 * 4 + 26 = 32.86 -> 33;
co 1.0 -> 25/4.4 * 1.0 = 5.68 -> 6; no2 30 -> 25/60 * 30 = 12.5 -> 13; so2 10 -> 2.5 -> 3.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipelines.thai_aqi import ThaiAQI
from sensors.reading import Reading
from sensors.registry import Registry, Sensor
from tests.pipelines.conftest import batch_pipeline, to_rows
from tests.pipelines.spooldata import HOUR, MINUTE, T0, batches_of, reading

CONSTANT = {"pm25": 20.0, "pm10": 60.0, "o3": 40.0, "co": 1.0, "no2": 30.0, "so2": 10.0}
PKT_AQ_001 = {
    "level": "sensor",
    "area": "pkt-aq-001",
    "super_cluster": "andaman",
    "city": "phuket",
    "district": "mueang-phuket",
}


def every(sensor: Sensor, start: int, end: int, step: int, values: dict[str, float]) -> list[Reading]:
    return [reading(sensor, ts, values) for ts in range(start, end, step)]


def run_aqi(registry: Registry, readings: list[Reading], hours: tuple[int, int], expected: list[Any]) -> None:
    with batch_pipeline() as p:
        rows = to_rows(p | beam.Create(batches_of(readings, registry)) | ThaiAQI(registry, hours=hours))
        found = rows | beam.Map(lambda r: (r[2], dict(r[1])["level"], dict(r[1])["area"], dict(r[3])))
        assert_that(found, equal_to(expected))


def test_periods_fill_in_as_their_coverage_is_reached(registry: Registry) -> None:
    """One sensor, constant air, one reading a minute from T0: which pollutants count at which hour."""
    sensor = registry.sensors["pkt-aq-001"]
    readings = every(sensor, T0, T0 + 24 * HOUR, MINUTE, CONSTANT)
    hours = [T0, T0 + 5 * HOUR, T0 + 17 * HOUR, T0 + 23 * HOUR]
    expected = []
    for hour in hours:
        subs = {"no2": 13, "so2": 3}  # 1 h: from the first hour
        if hour >= T0 + 5 * HOUR:
            subs |= {"o3": 33, "co": 6}  # 8 h: 6 of 8 hours
        if hour >= T0 + 17 * HOUR:
            subs |= {"pm25": 38, "pm10": 33}  # 24 h: 18 of 24 hours
        top = max(subs.values())
        dominant = next(p for p in ("pm25", "pm10", "o3", "co", "no2", "so2") if subs.get(p) == top)
        fields = {
            "aqi": top,
            "band": 2 if top > 25 else 1,
            "dominant": dominant,
            **{f"{p}_aqi": v for p, v in subs.items()},
        }
        expected.append((hour, "sensor", "pkt-aq-001", fields))
    with batch_pipeline() as p:
        rows = to_rows(p | beam.Create(batches_of(readings, registry)) | ThaiAQI(registry, hours=(T0, T0 + 24 * HOUR)))
        found = rows | beam.Filter(lambda r: r[2] in hours and ("level", "sensor") in r[1])
        assert_that(
            found | beam.Map(lambda r: (r[2], dict(r[1])["level"], dict(r[1])["area"], dict(r[3]))), equal_to(expected)
        )


def test_an_hour_needs_three_quarters_of_its_readings_and_the_last_hour_must_have_data(registry: Registry) -> None:
    sensor = registry.sensors["pkt-aq-001"]
    only_no2 = {"no2": 30.0}
    readings = (
        every(sensor, T0, T0 + 45 * MINUTE, MINUTE, only_no2)  # 45 of 60: the hour counts
        + every(sensor, T0 + HOUR, T0 + HOUR + 44 * MINUTE, MINUTE, only_no2)  # 44 of 60: it does not
    )
    # Hour T0+2h has no readings at all: no point, although nothing needs more than one hour.
    fields = {"aqi": 13, "band": 1, "dominant": "no2", "no2_aqi": 13}
    run_aqi(
        registry,
        readings,
        (T0, T0 + 3 * HOUR),
        [(T0, "sensor", "pkt-aq-001", fields), *[(T0, lv, a, fields) for lv, a in AREAS]],
    )


AREAS = [("district", "mueang-phuket"), ("city", "phuket"), ("super_cluster", "andaman")]


def test_area_means_weight_each_sensor_equally(registry: Registry) -> None:
    """20 ug/m3 from one sensor, 30 from a neighbour reporting twice as often: the district is at 25.0."""
    one, two = registry.sensors["pkt-aq-001"], registry.sensors["pkt-aq-002"]
    readings = every(one, T0, T0 + 24 * HOUR, MINUTE, {"pm25": 20.0}) + every(
        two, T0, T0 + 24 * HOUR, MINUTE // 2, {"pm25": 30.0}
    )
    last = T0 + 23 * HOUR
    expected = [
        (last, "sensor", "pkt-aq-001", {"aqi": 38, "band": 2, "dominant": "pm25", "pm25_aqi": 38}),
        (last, "sensor", "pkt-aq-002", {"aqi": 70, "band": 3, "dominant": "pm25", "pm25_aqi": 70}),
        *[(last, lv, a, {"aqi": 50, "band": 2, "dominant": "pm25", "pm25_aqi": 50}) for lv, a in AREAS],
    ]
    run_aqi(registry, readings, (last, last + HOUR), expected)


def test_the_points_are_the_schemas_aqi_points(registry: Registry) -> None:
    """Column-wise (`PointBatch`), the pipeline writes what `storage.schema.aqi_point` defines:
    measurement, tags, field names and their types (AQI, band and sub-indices stay integers)."""
    from pipelines.points import PointBatch
    from storage.line_protocol import Point
    from storage.schema import aqi_point

    def typed(point: Point) -> tuple[Any, ...]:  # field order is free in line protocol; types are not
        fields = {name: (type(value).__name__, value) for name, value in point.fields.items()}
        return point.measurement, dict(point.tags), fields, point.time, point.precision

    readings = every(registry.sensors["pkt-aq-001"], T0, T0 + HOUR, MINUTE, {"no2": 30.0})
    expected = aqi_point(PKT_AQ_001, aqi=13, band=1, dominant="no2", sub_indices={"no2": 13}, hour_start_ms=T0)
    with batch_pipeline() as p:
        points = (
            p
            | beam.Create(batches_of(readings, registry))
            | ThaiAQI(registry, hours=(T0, T0 + HOUR))
            | beam.FlatMap(PointBatch.points)
            | beam.Filter(lambda point: point.tags.get("level") == "sensor")
            | beam.Map(typed)
        )
        assert_that(points, equal_to([typed(expected)]))
