"""`smartcity ingest` against the session's Mosquitto and InfluxDB: what vendors and operators see."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from sensors.contract import MAX_PAYLOAD_BYTES, RejectCode
from sensors.reading import Reading
from sensors.spool import READINGS, REJECTS, closed_segments, read_readings, read_rejections
from tests.ingest.helpers import (
    IngestProcess,
    Publisher,
    influx_query,
    ingest_env,
    messages,
    wait_for_points,
    wait_until,
)
from tests.servers import StackHandle

pytestmark = [pytest.mark.integration, pytest.mark.system]

AQ_TOPIC = "smartcity/v1/phuket/air_quality/pkt-aq-001"


class RejectListener:
    """Collects what arrives on the reject topics."""

    def __init__(self, stack: StackHandle) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = stack.mqtt_client()
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.subscribe("smartcity/dlq/v1/#", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, json.loads(message.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def spool_readings(stream: Path) -> list[Reading]:
    return [
        r for s in closed_segments(stream.parent, READINGS) if s.stream == stream.name for r in read_readings(s.path)
    ]


@pytest.mark.parametrize(("fast_client", "slot"), [(True, 1), (False, 60)], ids=["fast-client", "paho-client"])
def test_published_readings_land_in_influxdb_exactly_with_self_metrics(
    stack: StackHandle, tmp_path: Path, fast_client: bool, slot: int
) -> None:
    """On both receive paths: ingest's fast paho client and paho's own (ingest/fastpaho.py)."""
    items = messages(3000, slot=slot)
    client_id = "it-happy" if fast_client else "it-happy-paho"
    env = ingest_env(stack, tmp_path / "home", client_id=client_id, fast_client=str(fast_client).lower())
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        assert ("paho's own client" in ingest.log.read_text()) is not fast_client
        publisher = Publisher(stack)
        publisher.publish(items)
        publisher.close()
        wait_for_points(stack, items, timeout_s=30)
        assert ingest.terminate() == 0
    stream = tmp_path / "home" / "spool" / client_id
    assert not list(stream.glob("*.open")), "a clean stop closes the open segments"
    assert sorted((r.sensor_id, r.ts) for r in spool_readings(stream)) == sorted((m.sensor_id, m.ts) for m in items)
    totals = influx_query(
        stack,
        'SELECT sum(received), sum(accepted), sum(rejected), sum(write_points) FROM "raw"."ingest" '
        f"WHERE instance = '{client_id}'",
    )
    assert totals["results"][0]["series"][0]["values"][0][1:] == [3000, 3000, 0, 3000]


def test_each_group_commit_wakes_the_raw_writer_child(stack: StackHandle, tmp_path: Path) -> None:
    """A reading reaches InfluxDB within seconds although the child's poll is 10 s: the consumer's group
    commit wakes it through the pipe (ingest/writerproc.py). Without the wake-up the second reading
    would wait for the next poll, about 10 s after the one that wrote the first."""
    items = messages(3, slot=61)
    env = ingest_env(stack, tmp_path / "home", client_id="it-wake", write_poll_interval_ms=10_000)
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        ingest.wait_log("writing stream it-wake to InfluxDB")
        publisher = Publisher(stack)
        for n in range(1, len(items) + 1):
            publisher.publish(items[n - 1 : n])
            wait_for_points(stack, items[:n], timeout_s=3)
        publisher.close()
        assert ingest.terminate() == 0


def test_every_reject_code_reaches_the_reject_topic_and_the_reject_store(stack: StackHandle, tmp_path: Path) -> None:
    now = int(time.time() * 1000)

    def body(**document: Any) -> bytes:
        return json.dumps(document).encode()

    cases: dict[RejectCode, tuple[str, bytes]] = {
        RejectCode.BAD_TOPIC: ("smartcity/v1/phuket/air_quality", body(ts=now, values={"pm25": 1})),
        RejectCode.PAYLOAD_TOO_LARGE: (AQ_TOPIC, b" " * (MAX_PAYLOAD_BYTES + 1)),
        RejectCode.INVALID_JSON: (AQ_TOPIC, b'{"ts": '),
        RejectCode.NOT_AN_OBJECT: (AQ_TOPIC, b"42"),
        RejectCode.UNKNOWN_SENSOR: ("smartcity/v1/phuket/air_quality/pkt-aq-999", body(ts=now, values={"pm25": 1})),
        RejectCode.SENSOR_TOPIC_MISMATCH: (
            "smartcity/v1/chiang-mai/air_quality/pkt-aq-001",
            body(ts=now, values={"pm25": 1}),
        ),
        RejectCode.MISSING_TS: (AQ_TOPIC, body(values={"pm25": 1})),
        RejectCode.INVALID_TS: (AQ_TOPIC, body(ts="yesterday", values={"pm25": 1})),
        RejectCode.TS_IN_FUTURE: (AQ_TOPIC, body(ts=now + 3_600_000, values={"pm25": 1})),
        RejectCode.TS_TOO_OLD: (AQ_TOPIC, body(ts=now - 60 * 86_400_000, values={"pm25": 1})),
        RejectCode.MISSING_VALUES: (AQ_TOPIC, body(ts=now)),
        RejectCode.UNKNOWN_METRIC: (AQ_TOPIC, body(ts=now, values={"pm2_5": 1})),
        RejectCode.INVALID_VALUE: (AQ_TOPIC, body(ts=now, values={"pm25": "high"})),
        RejectCode.OUT_OF_RANGE: (AQ_TOPIC, body(ts=now, values={"pm25": -3})),
        RejectCode.UNIT_MISMATCH: (
            AQ_TOPIC,
            json.dumps([{"bn": "pkt-aq-001:", "bt": now / 1000, "n": "pm25", "u": "ppm", "v": 1}]).encode(),
        ),
        # `first` below is stored before it: the same (sensor, ts) with another value
        RejectCode.CONFLICT: (AQ_TOPIC, body(ts=now - 1000, values={"pm25": 6})),
    }
    first = (AQ_TOPIC, body(ts=now - 1000, values={"pm25": 5}))
    assert set(cases) == set(RejectCode), "every reject code is covered"
    listener = RejectListener(stack)
    env = ingest_env(stack, tmp_path / "home", client_id="it-rejects")
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish([first, *cases.values()])
        publisher.close()
        wait_until(lambda: len(listener.received) >= len(cases), 20, "the rejections")
        assert ingest.terminate() == 0
    listener.close()
    by_code = {notice["code"]: (topic, notice) for topic, notice in listener.received}
    assert sorted(by_code) == sorted(code.value for code in RejectCode)
    for code, (topic, payload) in cases.items():
        reject_topic, notice = by_code[code.value]
        assert set(notice) == {"code", "detail", "topic", "received_at", "payload_b64"}
        assert notice["topic"] == topic and notice["detail"]
        assert base64.b64decode(notice["payload_b64"]) == payload[:4096]
        expected_topic = (
            "smartcity/dlq/v1/_malformed"
            if code == RejectCode.BAD_TOPIC
            else ("smartcity/dlq/v1/" + topic.removeprefix("smartcity/v1/"))
        )
        assert reject_topic == expected_topic
    stored = [r for s in closed_segments(tmp_path / "home" / "spool", REJECTS) for r in read_rejections(s.path)]
    assert sorted(r.code for r in stored) == sorted(code.value for code in RejectCode)
    assert {r.code: r.detail for r in stored} == {code: notice["detail"] for code, (_, notice) in by_code.items()}
    for record in stored:  # the kept record: the payload's first 512 bytes, its length and SHA-256
        payload = cases[RejectCode(record.code)][1]
        assert base64.b64decode(record.payload_b64) == payload[:512]
        assert (record.payload_bytes, record.payload_sha256) == (len(payload), hashlib.sha256(payload).hexdigest())


def test_oversized_invalid_utf8_and_binary_payloads_are_rejected_while_good_traffic_flows(
    stack: StackHandle, tmp_path: Path
) -> None:
    items = messages(2000, slot=2)
    abuse = [
        (AQ_TOPIC, b"{" + b"x" * (MAX_PAYLOAD_BYTES + 1024)),  # over the contract, within the broker's packet limit
        (AQ_TOPIC, b'{"ts": 1, "values": {"pm25": "\xff\xfe"}}'),
        (AQ_TOPIC, bytes(range(256)) * 8),
    ]
    mixed: list[Any] = list(items)
    for i, bad in enumerate(abuse):
        mixed.insert(500 * (i + 1), bad)
    listener = RejectListener(stack)
    env = ingest_env(stack, tmp_path / "home", client_id="it-abuse")
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish(mixed)
        publisher.close()
        wait_for_points(stack, items, timeout_s=30)
        wait_until(lambda: len(listener.received) >= 3, 10, "the rejections")
        assert ingest.terminate() == 0
    listener.close()
    assert [notice["code"] for _, notice in listener.received] == ["payload_too_large", "invalid_json", "invalid_json"]
    assert len(base64.b64decode(listener.received[0][1]["payload_b64"])) == 4096


def test_sigterm_acknowledges_flushes_and_exits_0_within_10_s(stack: StackHandle, tmp_path: Path) -> None:
    items = messages(20000, slot=3)
    env = ingest_env(stack, tmp_path / "home", client_id="it-sigterm")
    stream = tmp_path / "home" / "spool" / "it-sigterm"
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        sender = threading.Thread(target=publisher.publish, args=(items,), kwargs={"rate_per_s": 4000}, daemon=True)
        sender.start()
        time.sleep(2.0)
        started = time.monotonic()
        assert ingest.terminate(timeout_s=15) == 0
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    assert not list(stream.glob("*.open"))
    first_run = spool_readings(stream)
    assert 0 < len(first_run) < len(items)
    # Flushed: what the first run spooled is in InfluxDB already.
    spooled = {(r.sensor_id, r.ts) for r in first_run}
    wait_for_points(stack, [m for m in items if (m.sensor_id, m.ts) in spooled], timeout_s=1)
    sender.join(60)
    publisher.close()
    # Acknowledged: the second run gets the rest and nothing the first run had spooled.
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        ingest.wait_log("subscribed to")
        wait_for_points(stack, items, timeout_s=60)
        assert ingest.terminate() == 0
    both = spool_readings(stream)
    keys = [(r.sensor_id, r.ts) for r in both]
    assert len(keys) == len(set(keys)) == len(items)


def test_a_lost_broker_session_is_warned_about(stack: StackHandle, tmp_path: Path) -> None:
    env = ingest_env(stack, tmp_path / "home", client_id="it-session")
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        items = messages(10, slot=4)
        publisher.publish(items)
        publisher.close()
        wait_for_points(stack, items, timeout_s=20)
        assert ingest.terminate() == 0
    assert "had no session" not in ingest.log.read_text()
    # The broker forgets the session (as after its expiry, or a broker without persistence).
    eraser = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="it-session", protocol=mqtt.MQTTv5)
    eraser.username_pw_set("ingest", stack.mqtt_password("ingest"))
    erased = threading.Event()
    eraser.on_connect = lambda *args: erased.set()
    eraser.connect("127.0.0.1", stack.mqtt_port, clean_start=True)
    eraser.loop_start()
    assert erased.wait(10)
    eraser.disconnect()
    eraser.loop_stop()
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        ingest.wait_log("had no session for it-session")
        wait_until(lambda: _sum(stack, "session_not_present", "it-session") == 1, 10, "the session_not_present metric")
        assert ingest.terminate() == 0


def test_share_group_on_mosquitto_2_0_11_is_warned_about(stack: StackHandle, tmp_path: Path) -> None:
    env = ingest_env(stack, tmp_path / "home", client_id="it-share")
    with IngestProcess(env, tmp_path / "ingest.log", "--share-group", "ingest") as ingest:
        ingest.wait_log("subscribing to $share/ingest/smartcity/v1/#")
        ingest.wait_log("does not restore shared subscriptions")
        assert ingest.terminate() == 0


def test_a_full_spool_stops_consumption_and_the_broker_keeps_the_messages(stack: StackHandle, tmp_path: Path) -> None:
    items = messages(500, slot=5)
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="it-budget")
    with IngestProcess(env, tmp_path / "ingest-0.log") as ingest:  # the broker learns the session
        ingest.wait_log("subscribed to")
        assert ingest.terminate() == 0
    env = ingest_env(stack, home, client_id="it-budget", min_free_disk_mib=2**40)
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("spool budget reached")
        publisher = Publisher(stack)
        publisher.publish(items)
        publisher.close()
        wait_until(lambda: _sum(stack, "paused", "it-budget", "last") == 1, 10, "the paused metric")
        assert ingest.terminate() == 0
    assert spool_readings(home / "spool" / "it-budget") == []
    env = ingest_env(stack, home, client_id="it-budget")
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        wait_for_points(stack, items, timeout_s=30)
        assert ingest.terminate() == 0


def _sum(stack: StackHandle, field: str, instance: str, function: str = "sum") -> float:
    result = influx_query(stack, f'SELECT {function}({field}) FROM "raw"."ingest" WHERE instance = \'{instance}\'')
    series = result["results"][0].get("series")
    return float(series[0]["values"][0][1]) if series else 0.0
