"""Schema helpers build exactly the measurements, tags and fields of DESIGN.md."""

from __future__ import annotations

import msgspec
import pytest

from sensors.reading import Reading
from storage.line_protocol import LineProtocolError, encode_line
from storage.schema import (
    ANOMALY_TAGS,
    LEVELS,
    SENSOR_TAGS,
    RawLines,
    anomaly_point,
    aqi_point,
    health_point,
    ingest_reject_point,
    ingest_vendor_point,
    raw_point,
    rollup_fields,
    rollup_levels,
    rollup_measurement,
    rollup_point,
    rollup_stats,
    rollup_tags,
)
from tests.pipelines.spooldata import record_before

READING = Reading(
    sensor_id="cnx-aq-007",
    kind="air_quality",
    ts=1_764_028_800_000,
    values={"pm25": 41, "pm10": 55.5},
    vendor="acme",
    super_cluster="northern",
    city="chiang-mai",
    district="mueang",
    site="nimman",
)


def test_raw_point_of_a_reading() -> None:
    point = raw_point(READING)
    assert tuple(point.tags) == SENSOR_TAGS
    assert encode_line(point) == (
        "air_quality,city=chiang-mai,district=mueang,sensor_id=cnx-aq-007,site=nimman,super_cluster=northern,"
        "vendor=acme pm25=41.0,pm10=55.5 1764028800000"
    )


def test_raw_lines_are_the_lines_of_raw_points() -> None:
    """RawLines writes what `raw_point` + the encoder write, and refuses what they refuse, with their reason."""
    odd = msgspec.structs.replace
    readings = [
        READING,
        odd(READING, values={"pm25": 41.0, "pm10": 55.5}),  # the same line as ints 41 and 55.5
        odd(READING, ts=READING.ts + 1, values={"pm25": True, "pm10": 0, "o3": -0.0, "co": 1e-7, "no2": 1e22}),
        odd(READING, site="old town, east=1", district="a\\b", values={"pm25 x": 1.5}),  # escaped
        odd(READING, sensor_id="cnx-aq-008", vendor="ü"),
        odd(READING, values={}),  # no fields
        odd(READING, values={"pm25": float("nan")}),
        odd(READING, values={"time": 1.0}),  # a reserved key
        odd(READING, ts=2**63),  # outside what InfluxDB stores
        odd(READING, site="x\n"),  # a newline in a tag value: every reading of the series is refused
        odd(READING, site="x\n", ts=READING.ts + 2),
        odd(READING, site="s" * 65_300),  # a series key near the limit: the field keys are checked too
        READING,
    ]
    lines, refused = RawLines().lines(readings)
    expected, reasons = [], []
    for reading in readings:
        try:
            expected.append(encode_line(raw_point(reading)))
        except LineProtocolError as err:
            reasons.append((reading, str(err)))
    assert lines == expected
    assert [(reading, str(err)) for reading, err in refused] == reasons
    assert len(refused) == 6


def test_rollups_store_only_what_readers_use() -> None:
    """`_sum` for amounts only; no sensor row in a window no longer than the reporting interval (raw serves it)."""
    assert rollup_stats("mean") == ("mean", "min", "max", "count")
    assert rollup_stats("sum") == ("mean", "min", "max", "count", "sum")
    assert rollup_levels("1m", 60) == ("district", "city", "super_cluster")
    assert rollup_levels("1m", 600) == ("district", "city", "super_cluster")
    assert rollup_levels("1m", 10) == LEVELS  # several readings a minute: the sensor's minute is a figure of its own
    assert rollup_levels("1h", 600) == LEVELS
    with pytest.raises(ValueError, match="window"):
        rollup_levels("5m", 60)


def test_rollups_and_their_names() -> None:
    assert rollup_measurement("air_quality", "1h") == "air_quality_1h"
    assert rollup_fields("pm25") == ("pm25_mean", "pm25_min", "pm25_max", "pm25_count", "pm25_sum")
    with pytest.raises(ValueError, match="window"):
        rollup_measurement("air_quality", "5m")
    tags = rollup_tags("city", "chiang-mai", super_cluster="northern", city="chiang-mai")
    point = rollup_point("air_quality", "1m", tags, {"pm25": (40.5, 30.0, 51.0, 12, 486.0)}, 1_764_028_800_000)
    assert encode_line(point) == (
        "air_quality_1m,area=chiang-mai,city=chiang-mai,level=city,super_cluster=northern "
        "pm25_mean=40.5,pm25_min=30.0,pm25_max=51.0,pm25_count=12i,pm25_sum=486.0 1764028800000"
    )
    with pytest.raises(ValueError, match="district"):
        rollup_tags("sensor", "cnx-aq-007", super_cluster="northern", city="chiang-mai")


def test_aqi_and_health_points() -> None:
    tags = rollup_tags("district", "mueang", super_cluster="northern", city="chiang-mai", district="mueang")
    aqi = aqi_point(tags, aqi=152, band=5, dominant="pm25", sub_indices={"pm25": 152, "o3": 40}, hour_start_ms=0)
    assert dict(aqi.fields) == {"aqi": 152, "band": 5, "dominant": "pm25", "pm25_aqi": 152, "o3_aqi": 40}
    assert aqi.measurement == "aqi_1h"
    health = health_point(raw_point(READING).tags, received=55, expected=60, flatline=0, outliers=2, hour_start_ms=0)
    assert health.measurement == "sensor_health_1h"
    assert health.fields["completeness"] == pytest.approx(55 / 60)
    assert health.fields["seq_gaps"] == 0


def test_anomaly_point_carries_the_sensor_tags_and_what_was_judged() -> None:
    point = anomaly_point(
        raw_point(READING).tags,
        kind="air_quality",
        metric="pm25",
        anomaly_type="spike",
        value=410.0,
        score=9.5,
        threshold=3.5,
        ts_ms=READING.ts,
    )
    assert tuple(point.tags) == ANOMALY_TAGS
    assert encode_line(point) == (
        "anomalies,city=chiang-mai,district=mueang,kind=air_quality,metric=pm25,sensor_id=cnx-aq-007,site=nimman,"
        "super_cluster=northern,type=spike,vendor=acme value=410.0,score=9.5,threshold=3.5 1764028800000"
    )
    with pytest.raises(ValueError, match="anomaly type"):
        anomaly_point(
            raw_point(READING).tags,
            kind="air_quality",
            metric="pm25",
            anomaly_type="drift",
            value=1.0,
            score=1.0,
            threshold=1.0,
            ts_ms=0,
        )


def test_per_vendor_ingest_points() -> None:
    vendor = ingest_vendor_point("ingest-1", "acme", received=10, accepted=7, rejected=3, ts_ms=5, rejects_not_stored=2)
    assert encode_line(vendor) == (
        "ingest_vendors,instance=ingest-1,vendor=acme received=10i,accepted=7i,rejected=3i,rejects_not_stored=2i 5"
    )
    reject = ingest_reject_point("ingest-1", "_unknown", "bad_topic", 3, 5)
    assert encode_line(reject) == "ingest_rejects,code=bad_topic,instance=ingest-1,vendor=_unknown rejected=3i 5"


def test_record_lines_are_the_lines_of_the_decoded_records() -> None:
    """The raw writer's path from spool records (`record_lines`: only ts and values decoded, the series key
    found by the context's bytes) writes and refuses exactly what `lines` does for the decoded readings,
    for records of today's field order and of the order before, and skips what is not a reading."""
    odd = msgspec.structs.replace
    readings = [
        READING,
        odd(READING, ts=READING.ts + 1, values={"pm25": 0.0, "pm10": -0.0, "o3": 1e-7, "co": 1e22, "no2": 3.5}),
        odd(READING, site="old town, east=1", district="a\\b", values={"pm25 x": 1.5}),  # escaped
        odd(READING, sensor_id="cnx-aq-008", vendor='ü "quoted", ts'),  # a quote and ',"ts"' in the context
        odd(READING, values={}),  # no fields
        odd(READING, values={"time": 1.0}),  # a reserved key
        odd(READING, ts=2**62),  # outside what InfluxDB stores
        odd(READING, site="x\n"),  # a newline in a tag value: refused
        odd(READING, site="s" * 65_300),  # a series key near the limit: the field keys are checked too
        odd(READING, seq=7, received=READING.ts + 5),
        READING,
    ]
    encoder = msgspec.json.Encoder()
    records = [encoder.encode(r) for r in readings]
    records += [record_before(r) for r in readings]
    records.insert(3, b'{"sensor_id":"cnx-aq-007","kind":"air_quality","ts":"soon"}')  # not a reading
    records.insert(5, records[0][:-30])  # cut short (a checksum over bad JSON: a writer's bug)

    raw_lines = RawLines()
    for _ in range(2):  # the second time every context is cached
        lines, refused, corrupt = raw_lines.record_lines(records)
        expected_lines, expected_refused = RawLines().lines(readings + readings)
        assert lines == expected_lines
        assert [(r, str(e)) for r, e in refused] == [(r, str(e)) for r, e in expected_refused]
        assert len(corrupt) == 2
    assert records[0].startswith(b'{"sensor_id":"cnx-aq-007","kind":"air_quality","vendor":"acme",')
