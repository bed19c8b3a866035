"""A simulated day of the whole fleet, with faults, through the broker, ingest and every pipeline.

`smartcity simulate` replays 24 hours of a quarter of the fleet, 160 sensors spread over both cities
and every kind (about 170,000 messages; the whole fleet took 4 minutes for the same coverage), with the
default faults: malformed JSON, out-of-range values, wrong units, clock errors, unknown
sensors, QoS 1 duplicates, late and out-of-order readings, silent sensors) through the real
Mosquitto into a real `smartcity ingest`. The audit must balance; then the pipelines run over
the day, and every rollup and AQI point in InfluxDB must equal an independent plain-Python
computation (`reference.py`) over the accepted readings: counts and extremes exactly, means
within 1e-9.
"""

from __future__ import annotations

import ast
import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.audit import audit, load_manifest
from pipelines.run import Plan, run_plan
from pipelines.settings import PIPELINES, PipelineSettings
from sensors.registry import Registry
from sensors.spool import READINGS, closed_segments, read_readings
from storage.bootstrap import bootstrap
from storage.settings import InfluxSettings
from tests.ingest.helpers import IngestProcess, ingest_env, wait_until
from tests.pipelines import reference
from tests.pipelines.test_pipelines_it import expected_value, query_rows
from tests.servers import StackHandle, start_stack

pytestmark = pytest.mark.integration

DB = "simulated_day"
HOUR = 3_600_000
# A quarter of the 610-sensor fleet; `simulate --sensors` spreads them over cities, districts and kinds.
SENSORS = 160


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """A broker of its own: on the session's, every persistent session earlier tests left subscribed would
    queue a copy of the day (230k messages), and each autosave would rewrite them all."""
    handle = start_stack(tmp_path_factory.mktemp("day-stack"))
    try:
        yield handle
    finally:
        handle.down()


@pytest.fixture(scope="module")
def day(stack: StackHandle, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("simulated-day")
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - dt.timedelta(days=1)
    env = ingest_env(stack, home, client_id="simulated-day", segment_max_age_s=2)
    env["SMARTCITY_INFLUX_DB"] = DB
    influx = InfluxSettings.from_env(env)
    bootstrap(influx)
    manifest = home / "manifests" / "day.json"
    with IngestProcess(env, home / "ingest.log") as ingest:
        ingest.wait_log("subscribing to")
        simulate = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "simulate", "--from", f"{start:%Y-%m-%dT%H:%M:%SZ}",
             "--to", f"{today:%Y-%m-%dT%H:%M:%SZ}", "--speed", "max", "--faults", "default",
             "--seed", "7", "--sensors", str(SENSORS), "--manifest", str(manifest), "--home", str(stack.home)],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert simulate.returncode == 0, simulate.stderr[-2000:]
        loaded = [load_manifest(manifest)]

        def balanced() -> bool:
            return audit(loaded, influx, registry, home / "spool").balanced

        wait_until(balanced, timeout_s=300, what="the audit of the simulated day to balance", interval_s=2)
        assert ingest.terminate() == 0  # closes the open segments for the pipelines
    readings = [r for s in closed_segments(home / "spool", READINGS) for r in read_readings(s.path)]
    begin, end = int(start.timestamp() * 1000), int(today.timestamp() * 1000)
    plan = Plan.bounded(PIPELINES, begin, end)
    report = run_plan(plan, PipelineSettings(home=home), registry, [], influx)
    kinds = {r.kind for r in readings}
    stored: dict[reference.Key, dict[str, Any]] = {}
    for kind in sorted(kinds):
        for window in ("1m", "1h"):
            stored.update(query_rows(stack, f"{kind}_{window}", db=DB))
    return {
        "readings": readings,
        "manifest": loaded[0],
        "report": report,
        "plan": plan,
        "rollups": stored,
        "aqi": query_rows(stack, "aqi_1h", db=DB),
    }


def test_the_day_went_through_ingest_whole(day: dict[str, Any], registry: Registry) -> None:
    manifest = day["manifest"]
    distinct = {(r.sensor_id, r.ts) for r in day["readings"]}
    assert len(distinct) == sum(manifest.good.values()) > 150_000
    assert {r.kind for r in day["readings"]} == set(registry.kinds)
    assert {r.city for r in day["readings"]} == set(registry.cities)
    assert len(day["readings"]) > len(distinct)  # QoS 1 duplicates were spooled, and count once
    assert {r.sensor_id for r in day["readings"]} <= set(registry.sensors)
    assert day["report"].readings == len(day["readings"])


def test_every_rollup_point_of_the_day_matches_the_plain_python_computation(
    day: dict[str, Any], registry: Registry
) -> None:
    plan = day["plan"]
    expected = reference.rollups(day["readings"], plan.start_ms, plan.end_ms, registry)
    stored = day["rollups"]
    assert set(stored) == set(expected)
    for key, want in expected.items():
        got = stored[key]
        assert set(got) == set(want), key
        for name, value in want.items():
            assert got[name] == expected_value(name, value), (key, name)


def test_every_aqi_point_of_the_day_matches_the_plain_python_computation(
    day: dict[str, Any], registry: Registry
) -> None:
    plan = day["plan"]
    expected = reference.aqi(day["readings"], registry, range(plan.start_ms, plan.end_ms, HOUR))
    assert day["aqi"] == expected
    assert len(expected) > 500


def test_the_reference_does_not_use_the_code_under_test() -> None:
    """The comparison above means something only if reference.py computes on its own."""
    tree = ast.parse((Path(__file__).parent / "reference.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in {"pipelines", "numpy", "apache_beam", "storage"}}
