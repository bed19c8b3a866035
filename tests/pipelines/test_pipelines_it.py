"""End to end against the real InfluxDB: spool segments -> every pipeline -> InfluxDB, checked point by point.

The readings include what a real spool holds: QoS 1 duplicates in a later segment, a late
segment of old readings, a sensor silent for hours and one hour under the coverage rule.
Every rollup and AQI point in InfluxDB must equal the plain-Python computation of
`tests/pipelines/reference.py` (counts and extremes exactly, means within 1e-9), nothing more,
nothing less; and a second run must leave exactly the same points.

The last test goes through the broker and a real `smartcity ingest` process first, so the
pipelines read the spool ingest actually writes. (A run driven by `smartcity simulate`, with its
fault injection, is still to add: the simulator's expected totals would be the reference.)
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pipelines.run import Plan, follow, run_plan, slices
from pipelines.settings import PIPELINES, PipelineSettings
from sensors.reading import Reading
from sensors.registry import Registry
from storage.bootstrap import bootstrap
from storage.settings import InfluxSettings
from tests.pipelines import reference
from tests.pipelines.spooldata import HOUR, MINUTE, T0, fleet_readings, reading, write_segment, write_segments
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

DB = "pipelines_e2e"
SENSORS = ("pkt-aq-001", "pkt-aq-002", "pkt-aq-003", "cnx-aq-001", "cnx-aq-002", "pkt-wx-001", "pkt-wl-001")
HOURS = 26
TAG_KEYS = {
    "level",
    "area",
    "super_cluster",
    "city",
    "district",
    "site",
    "sensor_id",
    "vendor",
    "kind",
    "metric",
    "type",
}


def spool_readings(registry: Registry) -> list[Reading]:
    rng = random.Random(20251125)
    sensors = [registry.sensors[s] for s in SENSORS]
    readings = fleet_readings(registry, sensors, T0, T0 + HOURS * HOUR, rng)
    # Each sensor numbers its readings (`seq`); three of pkt-aq-001's in hour 2 never arrive (3 seq gaps).
    numbered: dict[str, int] = {}
    for i, r in enumerate(readings):
        readings[i] = msgspec.structs.replace(r, seq=numbered.setdefault(r.sensor_id, 0))
        numbered[r.sensor_id] += 1
    lost = [r for r in readings if r.sensor_id == "pkt-aq-001" and r.ts >= T0 + 2 * HOUR + 10 * MINUTE][:3]
    readings = [r for r in readings if r not in lost]
    quiet = registry.sensors["pkt-aq-002"]
    # Silent for hours 5-8, and only 30 readings in hour 9 (under the 45 an hour needs).
    readings = [
        r for r in readings if r.sensor_id != quiet.id or not (T0 + 5 * HOUR <= r.ts < T0 + 9 * HOUR + 30 * MINUTE)
    ]
    late = [r for r in readings if T0 + 3 * HOUR <= r.ts < T0 + 4 * HOUR and r.sensor_id == "cnx-aq-001"]
    on_time = [r for r in readings if r not in late]
    redelivered = [msgspec.structs.replace(r, received=r.received + 90_000) for r in rng.sample(on_time, 300)]
    return on_time + late + redelivered  # the late hour and the duplicates land in the last segments


def query_rows(stack: StackHandle, measurement: str, db: str = DB) -> dict[reference.Key, dict[str, Any]]:
    result = stack.influx_query(f'SELECT * FROM "rollup"."{measurement}"', db=db)["results"][0]
    assert not result.get("partial"), "InfluxDB truncated the result"
    rows: dict[reference.Key, dict[str, Any]] = {}
    for series in result.get("series", []):
        columns = series["columns"]
        for values in series["values"]:
            record = dict(zip(columns, values, strict=True))
            when = dt.datetime.fromisoformat(record.pop("time").replace("Z", "+00:00"))
            tags = {k: v for k, v in record.items() if k in TAG_KEYS and v is not None}
            fields = {k: v for k, v in record.items() if k not in TAG_KEYS and v is not None}
            rows[(measurement, reference.frozen(tags), int(when.timestamp() * 1000))] = fields
    return rows


@pytest.fixture(scope="module")
def run(stack: StackHandle, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("pipelines-e2e")
    readings = spool_readings(registry)
    write_segments(home / "spool", readings, per_segment=2_500)
    settings = PipelineSettings(home=home)
    influx = InfluxSettings.from_env(stack.env(), db=DB)
    bootstrap(influx)
    plan = Plan.bounded(PIPELINES, T0, T0 + HOURS * HOUR)
    # In three slices (as the command runs long ranges); the second run below is one piece.
    first = [run_plan(part, settings, registry, [], influx) for part in slices(plan, hours=10)]
    measurements = ["aqi_1h", "sensor_health_1h", "anomalies", *ROLLUPS]
    stored = {m: query_rows(stack, m) for m in measurements}
    return {
        "readings": readings,
        "report": first,
        "stored": stored,
        "plan": plan,
        "settings": settings,
        "influx": influx,
        "measurements": measurements,
    }


ROLLUPS = [f"{kind}_{w}" for kind in ("air_quality", "weather", "water_level") for w in ("1m", "1h")]


def expected_value(field: str, value: Any) -> Any:
    """A rollup field as stored: min, max and count exactly; mean and sum up to float rounding
    (numpy adds in another order than the reference's plain Python and `math.fsum`)."""
    if field.endswith("_mean"):
        # Within 1e-9; for a mean in the millions (a cumulative kWh meter) that is below a double's
        # resolution, so there a relative 1e-12 applies.
        return pytest.approx(value, rel=1e-12, abs=1e-9)
    if field.endswith("_sum"):
        return pytest.approx(value, rel=1e-12, abs=1e-9)
    return value


def test_every_rollup_point_matches_the_plain_python_computation(run: dict[str, Any], registry: Registry) -> None:
    expected = reference.rollups(run["readings"], T0, T0 + HOURS * HOUR, registry)
    stored = {k: v for m in ROLLUPS for k, v in run["stored"][m].items()}
    assert set(stored) == set(expected)
    assert len(expected) > 15_000  # (no sensor-level minutes: these kinds report every minute or less often)
    for key, want in expected.items():
        got = stored[key]
        assert set(got) == set(want), key
        for name, value in want.items():
            assert got[name] == expected_value(name, value), (key, name)


def test_every_aqi_point_matches_the_plain_python_computation(run: dict[str, Any], registry: Registry) -> None:
    hours = range(T0, T0 + HOURS * HOUR, HOUR)
    expected = reference.aqi(run["readings"], registry, hours)
    assert run["stored"]["aqi_1h"] == expected
    # The rules at work: PM appears from the 18th hour, and the silent sensor's hours have no value.
    quiet = reference.frozen(
        {
            "level": "sensor",
            "area": "pkt-aq-002",
            "super_cluster": "andaman",
            "city": "phuket",
            "district": "mueang-phuket",
        }
    )
    assert ("aqi_1h", quiet, T0 + 6 * HOUR) not in expected
    assert all("pm25_aqi" not in f for (_, _, h), f in expected.items() if h < T0 + 17 * HOUR)
    assert any("pm25_aqi" in f for (_, _, h), f in expected.items() if h >= T0 + 17 * HOUR)


def test_health_reports_silence_and_duplicates_count_once(run: dict[str, Any], registry: Registry) -> None:
    health = run["stored"]["sensor_health_1h"]
    assert len(health) == len(registry.sensors) * HOURS  # every registry sensor, every hour
    tags = registry.sensors["pkt-aq-002"]

    def of(sensor_id: str, hour: int) -> dict[str, Any]:
        s = registry.sensors[sensor_id]
        key = {
            "super_cluster": s.super_cluster,
            "city": s.city,
            "district": s.district,
            "site": s.site,
            "sensor_id": s.id,
            "vendor": s.vendor,
        }
        return health[("sensor_health_1h", reference.frozen(key), T0 + hour * HOUR)]

    assert of(tags.id, 6) == {
        "received": 0,
        "expected": 60,
        "completeness": 0.0,
        "flatline": 0,
        "outliers": 0,
        "seq_gaps": 0,
    }
    assert of(tags.id, 9)["received"] == 30
    unique = reference.unique(run["readings"])
    for sensor_id in SENSORS:
        got = sum(of(sensor_id, h)["received"] for h in range(HOURS))
        assert got == sum(1 for r in unique if r.sensor_id == sensor_id)
    gaps = reference.seq_gaps(run["readings"])
    assert gaps[("pkt-aq-001", T0 + 2 * HOUR)] == 3
    for sensor_id in SENSORS:
        for h in range(HOURS):
            assert of(sensor_id, h)["seq_gaps"] == gaps.get((sensor_id, T0 + h * HOUR), 0), (sensor_id, h)


def test_a_second_run_rewrites_exactly_the_same_points(
    run: dict[str, Any], stack: StackHandle, registry: Registry
) -> None:
    """...and run in one piece it gives the same points as in slices."""
    again = run_plan(run["plan"], run["settings"], registry, [], run["influx"])
    assert again.points_written == sum(report.points_written for report in run["report"])
    assert {m: query_rows(stack, m) for m in run["measurements"]} == run["stored"]
    assert run["report"][0].counters["segments_from_cache"] == 0 and again.counters["segments_from_cache"] > 0


def test_a_rerun_clears_anomalies_the_range_no_longer_confirms(
    run: dict[str, Any], stack: StackHandle, registry: Registry
) -> None:
    """A spike flagged earlier (e.g. by a follow cycle over part of an hour) goes when the hour is rerun."""
    from storage.schema import anomaly_point
    from storage.writer import make_writer

    sensor = registry.sensors["pkt-aq-001"]
    tags = {"super_cluster": sensor.super_cluster, "city": sensor.city, "district": sensor.district,
            "site": sensor.site, "sensor_id": sensor.id, "vendor": sensor.vendor}  # fmt: skip
    stale = anomaly_point(tags, kind="air_quality", metric="pm25", anomaly_type="spike", value=999.0, score=9.9,
                          threshold=3.5, ts_ms=T0 + 2 * HOUR + 7)  # fmt: skip
    influx = run["influx"]
    with make_writer(influx, rp=influx.rollup_rp) as writer:
        writer.write([stale])
    assert len(query_rows(stack, "anomalies")) == len(run["stored"]["anomalies"]) + 1
    run_plan(Plan.bounded(["anomalies"], T0 + 2 * HOUR, T0 + 3 * HOUR), run["settings"], registry, [], influx)
    assert query_rows(stack, "anomalies") == run["stored"]["anomalies"]


def test_command_line_runs_a_range_and_reports(cli_env: dict[str, str], run: dict[str, Any]) -> None:
    env = {**cli_env, "SMARTCITY_HOME": str(run["settings"].home), "SMARTCITY_INFLUX_DB": DB}
    command = [
        sys.executable,
        "-m",
        "deploy.cli",
        "pipeline",
        "rollup",
        "--from",
        "2025-11-25T10:30+07:00",
        "--to",
        "2025-11-25T12:00+07:00",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # 10:30+07:00 is widened to the whole hour 03:00Z..05:00Z.
    assert "rollup 2025-11-25T03:00Z..2025-11-25T05:00Z" in done.stdout
    assert " readings from " in done.stdout and " points in " in done.stdout


def test_follow_picks_up_closed_segments_rewrites_late_windows_and_checkpoints(
    stack: StackHandle, registry: Registry, tmp_path: Path
) -> None:
    """Two cycles of `run --follow`: the first takes what is in the spool, the second a late segment."""
    sensor = registry.sensors["pkt-wx-001"]
    on_time = [reading(sensor, T0 + m * MINUTE, {"temperature": 30.0}) for m in range(0, 150)]
    late = [reading(sensor, T0 + 90 * MINUTE + 30_000, {"temperature": 0.0}, received=T0 + 4 * HOUR)]
    home = tmp_path / "home"
    write_segments(home / "spool", on_time, per_segment=60)
    settings = PipelineSettings(home=home, poll_interval_s=0.1)
    influx = InfluxSettings.from_env(stack.env(), db="pipelines_follow")
    bootstrap(influx)
    now = (T0 + 3 * HOUR + 5 * MINUTE) / 1000

    def one_cycle() -> list[Any]:
        stop, reports = threading.Event(), []

        def record(report: Any) -> None:
            reports.append(report)
            stop.set()

        follow(settings, registry, [], influx, stop=stop, on_report=record, clock=lambda: now)
        return reports

    [first] = one_cycle()
    assert (first.plan.start_ms, first.plan.end_ms) == (T0, T0 + 3 * HOUR)
    checkpoint = json.loads(settings.checkpoint_path.read_text())
    assert checkpoint["streams"] == {"ingest-1": 3} and checkpoint["watermark_ms"] == on_time[-1].ts

    def hour_two() -> dict[str, Any]:
        rows = query_rows(stack, "weather_1h", db="pipelines_follow")
        key = (
            "weather_1h",
            reference.frozen(
                {
                    "level": "sensor",
                    "area": sensor.id,
                    "super_cluster": "andaman",
                    "city": "phuket",
                    "district": sensor.district,
                }
            ),
            T0 + HOUR,
        )
        return rows[key]

    assert (hour_two()["temperature_count"], hour_two()["temperature_min"]) == (60, 30.0)
    write_segment(home / "spool", 4, late)  # closes after the watermark moved on: a late reading
    [second] = one_cycle()
    assert (second.plan.start_ms, second.plan.end_ms) == (T0 + HOUR, T0 + 2 * HOUR)
    assert (hour_two()["temperature_count"], hour_two()["temperature_min"]) == (61, 0.0)
    assert json.loads(settings.checkpoint_path.read_text())["streams"] == {"ingest-1": 4}


def test_readings_published_through_the_broker_and_ingest_roll_up_exactly(
    stack: StackHandle, registry: Registry, tmp_path: Path
) -> None:
    """Publish -> Mosquitto -> `smartcity ingest` (its real spool) -> rollup pipeline -> InfluxDB.

    The expected figures come from the published messages, not from the spool.
    """
    from tests.ingest.helpers import IngestProcess, Publisher, ingest_env, messages, wait_for_points

    items = messages(3000, slot=9)
    home = tmp_path / "home"
    with IngestProcess(ingest_env(stack, home, client_id="pipelines-e2e"), tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribing to")
        publisher = Publisher(stack)
        publisher.publish(items)
        publisher.close()
        wait_for_points(stack, items, timeout_s=60)
        assert ingest.terminate() == 0  # a clean stop closes the open segment
    published = []
    for m in items:
        s = registry.sensors[m.sensor_id]
        published.append(reading(s, m.ts, m.values))
    start, end = min(r.ts for r in published), max(r.ts for r in published) + 1
    influx = InfluxSettings.from_env(stack.env(), db="pipelines_ingest")
    bootstrap(influx)
    plan = Plan.bounded(["rollup"], start, end)
    report = run_plan(plan, PipelineSettings(home=home), registry, [], influx)
    assert report.readings == len(items)
    expected = reference.rollups(published, plan.start_ms, plan.end_ms, registry)
    stored = {}
    for measurement in {key[0] for key in expected}:
        stored.update(query_rows(stack, measurement, db="pipelines_ingest"))
    assert set(stored) == set(expected)
    for key, want in expected.items():
        for name, value in want.items():
            assert stored[key][name] == expected_value(name, value), (key, name)
