"""Crashes and outages with real `smartcity ingest` processes: no accepted reading is ever lost.

Duplicates are allowed (QoS 1 redelivery, replay of the spool): a reading's
point is identified by (sensor, ts), so `wait_for_points` checks InfluxDB ends
with exactly the published points and values, no more, no less.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sensors.reading import Reading, encode_reading
from sensors.spool import closed_segments, read_readings
from tests.ingest.helpers import (
    BackgroundPublisher,
    IngestProcess,
    Publisher,
    ingest_env,
    messages,
    wait_for_points,
    wait_until,
)
from tests.servers import StackHandle

pytestmark = [pytest.mark.integration, pytest.mark.system]


def spooled(home: Path, stream: str) -> list[tuple[str, int]]:
    return [
        (r.sensor_id, r.ts)
        for s in closed_segments(home / "spool")
        if s.stream == stream
        for r in read_readings(s.path)
    ]


def test_kill_9_mid_stream_loses_no_accepted_reading(stack: StackHandle, tmp_path: Path) -> None:
    items = messages(30000, slot=10)
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="crash-kill")
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("subscribed to")
        sender = BackgroundPublisher(stack, items, rate_per_s=6000)
        sender.start()
        time.sleep(2.0)
        ingest.kill()
    assert list((home / "spool" / "crash-kill").glob("*.open")), "killed with a segment open"
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        sender.finish()
        wait_for_points(stack, items, timeout_s=60)
        assert ingest.terminate() == 0
    assert set(spooled(home, "crash-kill")) == {(m.sensor_id, m.ts) for m in items}


def test_a_torn_tail_is_cut_on_restart_and_never_reaches_influxdb(stack: StackHandle, tmp_path: Path) -> None:
    items = messages(1000, slot=11)
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="crash-torn", segment_max_age_s=3600)
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish(items)
        wait_for_points(stack, items, timeout_s=30)
        ingest.kill()
    [segment] = (home / "spool" / "crash-torn").glob("readings-*.open")
    good = segment.stat().st_size
    torn = encode_reading(read_one(segment))[:50]
    with open(segment, "ab") as handle:  # a write cut short by the crash
        handle.write(torn)
    more = messages(1500, slot=11)[1000:]
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        ingest.wait_log(f"torn tail of {len(torn)} bytes")
        publisher.publish(more)
        publisher.close()
        wait_for_points(stack, items + more, timeout_s=30)
        assert ingest.terminate() == 0
    recovered = segment.with_name(segment.name.replace(".open", ".seg"))
    assert recovered.stat().st_size == good
    assert sorted(spooled(home, "crash-torn")) == sorted((m.sensor_id, m.ts) for m in items + more)


def read_one(segment: Path) -> Reading:
    return next(read_readings(segment))


def test_two_processes_split_the_topic_tree_and_one_is_killed_and_restarted(stack: StackHandle, tmp_path: Path) -> None:
    phuket = messages(8000, slot=12, city="phuket")
    chiang_mai = messages(8000, slot=12, city="chiang-mai")
    home = tmp_path / "home"
    env_a = ingest_env(stack, home, client_id="split-phuket", topics="smartcity/v1/phuket/#")
    env_b = ingest_env(stack, home, client_id="split-chiang-mai", topics="smartcity/v1/chiang-mai/#")
    with IngestProcess(env_a, tmp_path / "a-1.log") as a, IngestProcess(env_b, tmp_path / "b.log") as b:
        a.wait_log("subscribed to")
        b.wait_log("subscribed to")
        interleaved = [m for pair in zip(phuket, chiang_mai, strict=True) for m in pair]
        sender = BackgroundPublisher(stack, interleaved, rate_per_s=5000)
        sender.start()
        time.sleep(1.5)
        a.kill()
        time.sleep(1.0)
        with IngestProcess(env_a, tmp_path / "a-2.log") as again:
            sender.finish()
            wait_for_points(stack, phuket + chiang_mai, timeout_s=60)
            assert again.terminate() == 0
        assert b.terminate() == 0
    assert set(spooled(home, "split-phuket")) == {(m.sensor_id, m.ts) for m in phuket}
    assert set(spooled(home, "split-chiang-mai")) == {(m.sensor_id, m.ts) for m in chiang_mai}


def test_broker_restarted_mid_stream(private_stack: StackHandle, tmp_path: Path) -> None:
    items = messages(12000, slot=0)
    env = ingest_env(private_stack, tmp_path / "home", client_id="crash-broker")
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        sender = BackgroundPublisher(private_stack, items, rate_per_s=4000, client_id="publisher")
        sender.start()
        time.sleep(1.5)
        broker = private_stack.mosquitto
        broker.stop()  # SIGTERM: Mosquitto saves its sessions and queues
        broker.start(detach=True)
        sender.finish()
        wait_for_points(private_stack, items, timeout_s=60)
        assert ingest.terminate() == 0
    log = ingest.log.read_text()
    assert "disconnected from" in log and "had no session" not in log


def test_broker_restarted_while_ingest_is_offline(private_stack: StackHandle, tmp_path: Path) -> None:
    items = messages(5000, slot=1)
    env = ingest_env(private_stack, tmp_path / "home", client_id="crash-offline")
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("subscribed to")
        assert ingest.terminate() == 0
    publisher = Publisher(private_stack)
    publisher.publish(items)  # queued by the broker in ingest's session
    publisher.close()
    broker = private_stack.mosquitto
    broker.stop()
    broker.start(detach=True)
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        ingest.wait_log("session present: True")
        wait_for_points(private_stack, items, timeout_s=60)
        assert ingest.terminate() == 0


def test_sigterm_while_influxdb_is_down_exits_0_in_time_and_loses_nothing(
    private_stack: StackHandle, tmp_path: Path
) -> None:
    items = messages(6000, slot=3)
    env = ingest_env(private_stack, tmp_path / "home", client_id="crash-stop")
    private_stack.influxdb.stop()
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(private_stack)
        publisher.publish(items)
        publisher.close()
        wait_until(lambda: "failed" in ingest.log.read_text(), 20, "a failed write")
        started = time.monotonic()
        assert ingest.terminate(timeout_s=15) == 0
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    private_stack.influxdb.start(detach=True)
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        wait_for_points(private_stack, items, timeout_s=60)
        assert ingest.terminate() == 0
