"""Incremental follow against the real InfluxDB: follow cycles over a growing spool == one bounded run.

The spool grows in steps (the fleet's readings in time order, then a step with a late hour and
QoS 1 redeliveries, then five minutes of live readings). Each step is taken by one follow cycle;
one step by a `smartcity pipeline run --follow` process that is killed with SIGKILL once its
cycle is checkpointed. Afterwards the follow database must hold exactly the points, field for
field, that `pipeline run --from --to` over the same spool writes into another database; and the
live cycle writes a few points per new reading, not points for the whole fleet.

The readings are of the last nine clock hours, because the killed process runs on the real clock.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pipelines.run import Plan, RunReport, follow, run_plan
from pipelines.settings import PIPELINES, PipelineSettings
from sensors.reading import Reading
from sensors.registry import Registry
from storage.bootstrap import bootstrap
from storage.settings import InfluxSettings
from tests.pipelines.spooldata import HOUR, MINUTE, fleet_readings, write_segment
from tests.pipelines.test_pipelines_it import query_rows
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

FOLLOW_DB, BATCH_DB = "incremental_follow", "incremental_batch"
# Long enough for the 8 h AQI periods (6 valid hours of 8), which a late hour 0 changes up to hour 7.
HOURS = 9
# Target of issue 18 for a follow cycle (was about 190 when a cycle rewrote every row of its hours).
MAX_POINTS_PER_READING = 12


def spool_steps(registry: Registry, t0: int) -> list[list[Reading]]:
    """The readings of each step: a quarter of every kind's sensors over HOURS hours, cut in time;
    the fourth step adds a late stretch of hour 0 and redeliveries; the last is five live minutes."""
    rng = random.Random(18)
    sensors = [s for kind in registry.kinds for s in registry.sensors_of(kind=kind)[::4]]
    readings = fleet_readings(registry, sensors, t0, t0 + HOURS * HOUR, rng)
    held = {"pkt-aq-001", "pkt-wl-001"}
    late = [r for r in readings if r.sensor_id in held and t0 + 20 * MINUTE <= r.ts < t0 + 40 * MINUTE]
    on_time = [r for r in readings if not (r.sensor_id in held and t0 + 20 * MINUTE <= r.ts < t0 + 40 * MINUTE)]
    end = t0 + HOURS * HOUR
    cuts = [t0, t0 + 250 * MINUTE, t0 + 330 * MINUTE, t0 + 430 * MINUTE, end - 5 * MINUTE, end]
    steps = [[r for r in on_time if lo <= r.ts < hi] for lo, hi in itertools.pairwise(cuts)]
    redelivered = [msgspec.structs.replace(r, received=r.received + 90_000) for r in rng.sample(on_time, 200)]
    steps[3] = steps[3] + late + redelivered
    return steps


def stored(stack: StackHandle, db: str, measurements: list[str], end_ms: int) -> dict[Any, Any]:
    """Every point of `measurements` before `end_ms` (a clock hour ending during the test is not the batch's)."""
    rows: dict[Any, Any] = {}
    for m in measurements:
        rows.update({k: v for k, v in query_rows(stack, m, db=db).items() if k[2] < end_ms})
    return rows


def follow_once(
    settings: PipelineSettings, registry: Registry, influx: InfluxSettings, clock: Callable[[], float] = time.time
) -> list[RunReport]:
    """The reports of one follow cycle (in this process) over the segments closed since the checkpoint."""
    stop, reports = threading.Event(), []

    def record(report: RunReport) -> None:
        reports.append(report)
        stop.set()  # ends the loop after this cycle

    follow(settings, registry, [], influx, stop=stop, on_report=record, clock=clock)
    return reports


def wait_for_checkpoint(path: Path, seq: int, process: subprocess.Popen[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text())["streams"].get("ingest-1", 0) >= seq:
                return
        except (OSError, ValueError, KeyError):
            pass
        if process.poll() is not None:
            error = process.stderr.read() if process.stderr else ""
            pytest.fail(f"the follow process exited with {process.returncode}: {error}")
        time.sleep(0.2)
    pytest.fail(f"the follow process did not checkpoint segment {seq} in {timeout_s} s")


def follow_until_checkpoint_then_kill_9(env: dict[str, str], seq: int) -> None:
    """Run `smartcity pipeline run --follow` in `env` until its checkpoint holds segment `seq`, then SIGKILL it."""
    checkpoint = PipelineSettings.from_env(env).checkpoint_path
    command = [sys.executable, "-m", "deploy.cli", "pipeline", "run", "--follow", "--poll-interval", "0.2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(checkpoint, seq, process)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)


def test_follow_cycles_with_a_kill_9_write_exactly_the_points_of_a_bounded_run(
    stack: StackHandle, registry: Registry, cli_env: dict[str, str], tmp_path: Path
) -> None:
    t0 = int(time.time() * 1000) // HOUR * HOUR - HOURS * HOUR
    steps = spool_steps(registry, t0)
    home = tmp_path / "home"
    spool = home / "spool"
    settings = PipelineSettings(home=home, poll_interval_s=0.1)
    influx = InfluxSettings.from_env(stack.env(), db=FOLLOW_DB)
    bootstrap(influx)

    write_segment(spool, 1, steps[0])
    follow_once(settings, registry, influx)
    # The second step is taken by a `smartcity pipeline run --follow` process, killed once it checkpointed.
    write_segment(spool, 2, steps[1])
    follow_until_checkpoint_then_kill_9({**cli_env, "SMARTCITY_HOME": str(home), "SMARTCITY_INFLUX_DB": FOLLOW_DB}, 2)
    assert settings.aqi_state_path.exists()
    for seq, step in enumerate(steps[2:4], start=3):
        write_segment(spool, seq, step)
        follow_once(settings, registry, influx)
    write_segment(spool, 5, steps[4])
    [live] = follow_once(settings, registry, influx)
    assert live.plan.start_ms == t0 + (HOURS - 1) * HOUR and not live.plan.aqi_lookback  # the AQI's day from the state
    per_reading = live.points_written / len(steps[4])
    print(f"live cycle: {len(steps[4])} new readings, {live.points_written} points ({per_reading:.2f} per reading)")
    assert 0 < per_reading <= MAX_POINTS_PER_READING, per_reading

    batch_influx = InfluxSettings.from_env(stack.env(), db=BATCH_DB)
    bootstrap(batch_influx)
    run_plan(Plan.bounded(PIPELINES, t0, t0 + HOURS * HOUR), PipelineSettings(home=home), registry, [], batch_influx)
    measurements = [
        "aqi_1h",
        "sensor_health_1h",
        "anomalies",
        *(f"{kind}_{w}" for kind in registry.kinds for w in ("1m", "1h")),
    ]
    end = t0 + HOURS * HOUR
    followed, bounded = stored(stack, FOLLOW_DB, measurements, end), stored(stack, BATCH_DB, measurements, end)
    assert len(bounded) > 10_000 and {k[0] for k in bounded} >= {"aqi_1h", "sensor_health_1h", "air_quality_1h"}
    assert followed.keys() == bounded.keys()
    assert {k: v for k, v in followed.items() if bounded[k] != v} == {}


def test_a_follow_cycle_clears_the_anomalies_of_its_sensor_hours_only(stack: StackHandle, registry: Registry) -> None:
    """A spike flagged by an earlier cycle over part of an hour goes when a cycle rewrites that sensor-hour;
    the anomalies of other sensors, and of the sensor's other hours, stay."""
    from pipelines.incremental import Touched
    from pipelines.run import clear_sensor_anomalies
    from storage.schema import anomaly_point
    from storage.writer import make_writer
    from tests.pipelines.spooldata import T0, batches_of, reading

    influx = InfluxSettings.from_env(stack.env(), db="incremental_anomalies")
    bootstrap(influx)
    one, other = registry.sensors["pkt-aq-001"], registry.sensors["pkt-aq-002"]

    def spike(sensor_id: str, ts: int) -> Any:
        s = registry.sensors[sensor_id]
        tags = {name: getattr(s, name) for name in ("super_cluster", "city", "district", "site", "vendor")}
        return anomaly_point({**tags, "sensor_id": s.id}, kind="air_quality", metric="pm25", anomaly_type="spike",
                             value=999.0, score=9.9, threshold=3.5, ts_ms=ts)  # fmt: skip

    with make_writer(influx, rp=influx.rollup_rp) as writer:
        writer.write([spike(one.id, T0 + 7), spike(other.id, T0 + 8), spike(one.id, T0 + HOUR + 9)])
    touched = Touched.of(batches_of([reading(one, T0 + 5 * MINUTE, {"pm25": 10.0})], registry), registry, ())
    clear_sensor_anomalies(influx, touched, Plan(PIPELINES, T0, T0 + 2 * HOUR, T0 + 2 * HOUR))
    left = {(k[1], k[2]) for k in query_rows(stack, "anomalies", db="incremental_anomalies")}
    assert {(dict(tags)["sensor_id"], t) for tags, t in left} == {(other.id, T0 + 8), (one.id, T0 + HOUR + 9)}
