"""`pipeline run --follow` through an InfluxDB outage longer than the writer's retries.

The follow must not exit (a terminal or a supervisor-less host would then stop the city's
rollups): it retries the cycle with back-off from the same checkpoint, and once InfluxDB is back
it writes exactly the points a bounded run over the same spool writes. And when InfluxDB hangs
(frozen, not down), a second signal stops the follow at once, and the next run redoes the cycle.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.run import Plan, follow, run_plan
from pipelines.settings import PIPELINES, PipelineSettings
from sensors.checkpoint import Checkpoint
from sensors.registry import Registry, default_registry
from storage.bootstrap import bootstrap
from storage.settings import InfluxSettings
from tests.pipelines.spooldata import HOUR, fleet_readings, write_segment
from tests.pipelines.test_incremental_it import stored
from tests.servers import StackHandle
from tests.system.report import Report, Row

pytestmark = pytest.mark.system

FOLLOW_DB, BATCH_DB = "outage_follow", "outage_batch"


@pytest.fixture
def registry() -> Registry:
    return default_registry()


def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def done(checkpoint: Path) -> bool:
    """Whether the follow checkpointed segment 1, the test's only one."""
    return Checkpoint.load(checkpoint).streams.get("ingest-1", 0) >= 1


def test_follow_retries_through_an_influxdb_outage_and_then_writes_what_a_bounded_run_writes(
    private_stack: StackHandle,
    registry: Registry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    reliability: Report,
) -> None:
    started = time.monotonic()
    t0 = int(time.time() * 1000) // HOUR * HOUR - HOUR  # the last ended clock hour
    sensors = [s for kind in registry.kinds for s in registry.sensors_of(kind=kind)[:3]]
    readings = fleet_readings(registry, sensors, t0, t0 + HOUR, random.Random(7))
    home = tmp_path / "home"
    write_segment(home / "spool", 1, readings)
    settings = PipelineSettings(home=home, poll_interval_s=0.1)
    env = {**private_stack.env(), "SMARTCITY_INFLUX_MAX_RETRIES": "0"}  # every failed write gives up at once
    influx = InfluxSettings.from_env(env, db=FOLLOW_DB)
    bootstrap(influx)

    private_stack.influxdb.stop()
    stop, failed = threading.Event(), list[BaseException]()
    caplog.set_level(logging.ERROR, logger="pipelines.run")

    def run() -> None:
        try:
            follow(settings, registry, [], influx, stop=stop)
        except BaseException as err:  # the thread's end is the test's evidence
            failed.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        failures = lambda: sum("follow cycle failed" in r.getMessage() for r in caplog.records)  # noqa: E731
        until(lambda: failures() >= 3 or not thread.is_alive(), 60, "three failed follow cycles while InfluxDB is down")
        assert thread.is_alive(), failed
        assert not done(settings.checkpoint_path)

        private_stack.influxdb.start(detach=True)
        back = time.monotonic()
        until(lambda: done(settings.checkpoint_path), 90,
              "the follow to write segment 1 once InfluxDB is back")  # fmt: skip
        recovery_s = time.monotonic() - back
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and failed == []

    batch = InfluxSettings.from_env(private_stack.env(), db=BATCH_DB)
    bootstrap(batch)
    run_plan(Plan.bounded(PIPELINES, t0, t0 + HOUR), PipelineSettings(home=home), registry, [], batch)
    measurements = ["aqi_1h", "sensor_health_1h", *(f"{kind}_{w}" for kind in registry.kinds for w in ("1m", "1h"))]
    followed = stored(private_stack, FOLLOW_DB, measurements, t0 + HOUR)
    bounded = stored(private_stack, BATCH_DB, measurements, t0 + HOUR)
    assert len(bounded) > 100 and {k[0] for k in bounded} >= {"aqi_1h", "sensor_health_1h", "air_quality_1h"}
    assert followed.keys() == bounded.keys()
    assert {k: v for k, v in followed.items() if bounded[k] != v} == {}
    reliability.add(
        Row("InfluxDB down longer than the writer's retries under `pipeline run --follow` (3 failed cycles)", 1,
            len(readings), len(readings), 0, None, [recovery_s], seconds=time.monotonic() - started)
    )  # fmt: skip


def test_a_second_signal_stops_a_follow_waiting_on_a_hung_influxdb(
    private_stack: StackHandle, registry: Registry, tmp_path: Path
) -> None:
    """SIGTERM lets the cycle in progress finish; with InfluxDB frozen (SIGSTOP) that can take minutes of
    timeouts and retries, so a second SIGTERM (or Ctrl-C) stops at once, nothing of the cycle checkpointed;
    the next run writes the segment."""
    t0 = int(time.time() * 1000) // HOUR * HOUR - HOUR
    sensors = [s for kind in registry.kinds for s in registry.sensors_of(kind=kind)[:2]]
    home = tmp_path / "home"
    env = {**os.environ, **private_stack.env(home=home), "SMARTCITY_INFLUX_DB": "hung_follow"}
    bootstrap(InfluxSettings.from_env(env))
    checkpoint = PipelineSettings.from_env(env).checkpoint_path
    command = [sys.executable, "-m", "deploy.cli", "pipeline", "run", "--follow", "--poll-interval", "0.2"]
    log = tmp_path / "follow.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    pid = private_stack.influxdb.running_pid()
    assert pid is not None
    try:
        until(lambda: "following" in log.read_text(), 60, "the follow to start")
        os.kill(pid, signal.SIGSTOP)
        write_segment(home / "spool", 1, fleet_readings(registry, sensors, t0, t0 + HOUR, random.Random(3)))
        time.sleep(8)  # the cycle reads the segment, computes, and waits on InfluxDB
        process.send_signal(signal.SIGTERM)
        until(lambda: "stopping after the cycle in progress" in log.read_text(), 10, "the first signal's answer")
        time.sleep(1)
        assert process.poll() is None, "the first signal must let the cycle finish"
        process.send_signal(signal.SIGTERM)
        code = process.wait(5)
    finally:
        os.kill(pid, signal.SIGCONT)
        if process.poll() is None:
            process.kill()
    assert code == 128 + signal.SIGTERM
    assert "the next run redoes it from the checkpoint" in log.read_text()
    assert not done(checkpoint)

    again = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: done(checkpoint), 90, "the next run to write segment 1")
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
    finally:
        if again.poll() is None:
            again.kill()
