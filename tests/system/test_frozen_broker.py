"""A broker that stops answering (SIGSTOP: a hung host, a full disk under Mosquitto).

While ingest stops, SIGTERM must still end ingest within `shutdown_timeout_s`, exit 0, with its
segments closed: an operator's restart must not hang on a neighbour. The
broker, thawed, redelivers what ingest could not acknowledge; the next run
stores every reading with its values.

While ingest runs, for longer than its keepalive: ingest reconnects to its
session when the broker is back, and loses nothing. When ingest starts: it
waits, logging each attempt once, and then works.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from sensors.spool import READINGS, closed_segments, read_readings
from tests.ingest.helpers import (
    IngestProcess,
    ingest_env,
    messages,
    publish_all,
    raw_points,
    wait_for_points,
    wait_until,
)
from tests.servers import StackHandle

pytestmark = pytest.mark.system

SHUTDOWN_TIMEOUT_S = 4.0


def test_sigterm_with_a_frozen_broker_ends_within_shutdown_timeout(private_stack: StackHandle, tmp_path: Path) -> None:
    stack = private_stack
    items = messages(20_000, slot=45)
    bad = [dataclasses.replace(m, payload=b"{not json") for m in items[:200]]  # reject notices in flight
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="sys-frozen", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        ingest.proc.send_signal(signal.SIGSTOP)  # the broker queues a backlog for ingest ...
        publish_all(stack, bad + items[200:])
        ingest.proc.send_signal(signal.SIGCONT)  # ... and freezes while ingest drains it
        spool = home / "spool" / "sys-frozen"
        wait_until(lambda: any(spool.glob("readings-*")), 30, "a spooled reading")
        pid = stack.mosquitto.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            stopping = time.monotonic()
            code = ingest.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 30)
            elapsed = time.monotonic() - stopping
        finally:
            os.kill(pid, signal.SIGCONT)
    spooled = sum(1 for s in closed_segments(home / "spool", READINGS) for _ in read_readings(s.path))
    print(f"stopped in {elapsed:.1f} s with the broker frozen, {spooled} readings spooled")  # shown with -s
    assert code == 0
    assert elapsed <= SHUTDOWN_TIMEOUT_S, f"took {elapsed:.1f} s to stop with the broker frozen"
    assert not list(spool.glob("*.open"))
    assert spooled > 0

    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        ingest.wait_log("subscribed to")
        wait_for_points(stack, items[200:], timeout_s=60)
        assert ingest.terminate() == 0
    stored = raw_points(stack, items[200:])
    assert all(stored[(m.sensor_id, m.ts)] == m.values for m in items[200:])


def test_a_broker_frozen_past_the_keepalive_is_reconnected_and_loses_nothing(
    private_stack: StackHandle, tmp_path: Path
) -> None:
    """Mosquitto frozen for 12 s while ingest drains a backlog (`keepalive_s = 5`): ingest gives the
    connection up, reconnects to its session once the broker is back, and every reading is stored."""
    stack = private_stack
    items = messages(20_000, slot=47)
    env = ingest_env(stack, tmp_path / "home", client_id="sys-frozen-live", keepalive_s=5)
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        ingest.proc.send_signal(signal.SIGSTOP)
        publish_all(stack, items[:15_000])
        ingest.proc.send_signal(signal.SIGCONT)
        pid = stack.mosquitto.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(12)
        finally:
            os.kill(pid, signal.SIGCONT)
        publish_all(stack, items[15_000:])
        wait_for_points(stack, items, timeout_s=90)
        assert ingest.terminate() == 0
    log = ingest.log.read_text()
    assert log.count("Keep alive timeout") == 1 and "session present: True" in log  # logged once
    stored = raw_points(stack, items)
    assert all(stored[(m.sensor_id, m.ts)] == m.values for m in items)


def test_a_broker_frozen_at_start_is_waited_for_and_each_attempt_logged_once(
    private_stack: StackHandle, tmp_path: Path
) -> None:
    """Ingest starts while Mosquitto is frozen: its CONNECT gets no CONNACK. Each attempt ends at the
    keepalive and is logged once (paho reports that timeout twice); once the broker is back, ingest
    subscribes and stores what is published."""
    stack = private_stack
    env = ingest_env(stack, tmp_path / "home", client_id="sys-frozen-start", keepalive_s=5)
    pid = stack.mosquitto.running_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with IngestProcess(env, tmp_path / "ingest.log") as ingest:
            wait_until(lambda: "Keep alive timeout" in ingest.log.read_text(), 30, "the first attempt to time out")
            time.sleep(1)
            os.kill(pid, signal.SIGCONT)
            ingest.wait_log("subscribed to", 30)
            items = messages(500, slot=48)
            publish_all(stack, items)
            wait_for_points(stack, items, timeout_s=30)
            assert ingest.terminate() == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    times = [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in ingest.log.read_text().splitlines()
        if "Keep alive timeout" in line
    ]
    assert times and all((b - a).total_seconds() >= 1 for a, b in itertools.pairwise(times)), times
