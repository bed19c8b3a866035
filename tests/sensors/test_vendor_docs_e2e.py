"""Acceptance: a vendor script built only from the guide's examples, through the real broker and ingest.

The script reads docs/vendors.md, moves each example's times to now (as a sensor would stamp its
readings), and publishes it with the account of the sensor's vendor, MQTT 5, QoS 1, while it
listens on the reject topics as the guide says. Every accepted example must land in InfluxDB,
every rejected one must come back on the reject topic with its code, and every publish the guide
says the broker refuses must get PUBACK 0x87.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sensors.contract import MALFORMED_REJECT_TOPIC, Accepted, Contract, parse_topic, reject_topic
from sensors.contract_examples import ACCEPTED, EXAMPLE_RECEIVED_MS
from sensors.contract_guide import (
    BROKER_HOST_PLACEHOLDER,
    CA_FILE_NAME,
    MQTTS_PORT,
    PASSWORD_PLACEHOLDER,
    GuideExample,
    connect_examples,
    guide_examples,
)
from sensors.registry import default_registry
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "vendors.md"
REGISTRY = default_registry()
NOT_AUTHORIZED = 0x87

_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?")
_EPOCH = re.compile(r'("(?:ts|bt|t)": )(\d{10}(?:\d{3})?)(?![\d.])')


def restamp(text: str, shift_s: int) -> str:
    """The example with every date-time, and every epoch time (seconds or ms), moved by `shift_s`."""

    def date_time(match: re.Match[str]) -> str:
        raw = match[0]
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00")) + timedelta(seconds=shift_s)
        out = moment.isoformat(sep=raw[10], timespec="milliseconds" if "." in raw else "seconds")
        return out.replace("+00:00", "Z") if raw.endswith("Z") else out

    def epoch(match: re.Match[str]) -> str:
        key, value = match[1], match[2]
        return key + str(int(value) + shift_s * (1000 if len(value) == 13 else 1))

    return _EPOCH.sub(epoch, _DATE_TIME.sub(date_time, text))


@dataclass
class Outcome:
    example: GuideExample
    topic: str
    payload: bytes
    vendor: str
    mid: int


class VendorClient:
    """One vendor's MQTT 5 connection, as the guide tells vendors to connect."""

    def __init__(self, stack: StackHandle, vendor: str, rejects: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{vendor}-e2e-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.username_pw_set(vendor, stack.mqtt_password(vendor))
        self.acks: dict[int, int] = {}
        self.subscribed = threading.Event()
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.acks.__setitem__(mid, reason.value)
        self.client.on_message = lambda _c, _u, msg: rejects.append((vendor, msg.topic, json.loads(msg.payload)))
        self.client.connect("127.0.0.1", stack.mqtt_port, keepalive=60)
        self.client.loop_start()
        assert connected.wait(10), f"{vendor} could not connect"
        self.client.subscribe("smartcity/dlq/v1/#", qos=1)
        assert self.subscribed.wait(10)

    def publish(self, topic: str, payload: bytes) -> int:
        return self.client.publish(topic, payload, qos=1).mid

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ingest(stack: StackHandle, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env.update(stack.env(home=tmp_path / "home"))
    env["SMARTCITY_INGEST_CLIENT_ID"] = f"vendor-docs-e2e-{uuid.uuid4().hex[:8]}"
    log = open(tmp_path / "ingest.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "-v", "ingest", "--quiet"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 90  # a loaded 2-core machine takes long to import the service
        while b"subscribing to" not in (tmp_path / "ingest.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ingest.log").read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # the SUBACK follows the log line
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def stored_points(stack: StackHandle, kind: str, sensor_id: str, ts_ms: list[int]) -> dict[int, dict[str, float]]:
    query = (
        f'SELECT * FROM "raw"."{kind}" WHERE sensor_id = \'{sensor_id}\' '
        f"AND time >= {min(ts_ms)}ms AND time <= {max(ts_ms)}ms"
    )
    found: dict[int, dict[str, float]] = {}
    for series in stack.influx_query(query, db="smartcity")["results"][0].get("series", []):
        for row in series["values"]:
            record = dict(zip(series["columns"], row, strict=True))
            ts = int(datetime.fromisoformat(record.pop("time")).timestamp() * 1000)
            found[ts] = {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
    return found


def test_a_script_built_from_the_guide_examples_lands_every_reading_and_gets_every_reject(
    stack: StackHandle, ingest: subprocess.Popen[bytes]
) -> None:
    examples = guide_examples(GUIDE.read_text())
    mine = next(parse_topic(e.markers["topic"]) for e in examples if e.markers["expect"] == ACCEPTED)
    assert mine is not None
    default_vendor = REGISTRY.sensors[mine.sensor_id].vendor
    now_s = int(time.time())
    shift_s = now_s - EXAMPLE_RECEIVED_MS // 1000

    rejects: list[tuple[str, str, dict[str, Any]]] = []  # (the vendor it reached, topic, message)
    clients: dict[str, VendorClient] = {}
    outcomes: list[Outcome] = []
    try:
        for n, example in enumerate(examples):
            topic = example.markers["topic"]
            parts = parse_topic(topic)
            sensor = REGISTRY.sensors.get(parts.sensor_id) if parts else None
            vendor = sensor.vendor if sensor and parts and parts.kind == sensor.kind else default_vendor
            if vendor not in clients:
                clients[vendor] = VendorClient(stack, vendor, rejects)
            # The guide shows one instant in many forms; sent one after another, a form with other values
            # for the same (sensor, ts) is a `conflict`. Each accepted example gets an hour of its own.
            own_hour = 3600 * n if example.markers["expect"] == ACCEPTED else 0
            payload = restamp(example.payload, shift_s - own_hour).encode()
            outcomes.append(Outcome(example, topic, payload, vendor, clients[vendor].publish(topic, payload)))
        deadline = time.monotonic() + 20
        while not all(o.mid in clients[o.vendor].acks for o in outcomes):
            assert time.monotonic() < deadline, "publishes not acknowledged by the broker"
            time.sleep(0.05)

        # What the broker lets through is what `contract check` judges at the same moment.
        contract = Contract(REGISTRY)
        expected_rejects: dict[str, tuple[str, str]] = {}
        expected_points: dict[tuple[str, str, int], dict[str, float]] = {}
        for o in outcomes:
            expect = o.example.markers["expect"]
            parts = parse_topic(o.topic)
            sensor = REGISTRY.sensors.get(parts.sensor_id) if parts else None
            owned = sensor is not None and parts is not None and o.topic == sensor.topic
            if not owned:  # the guide: the broker refuses topics that are not the vendor's sensors'
                assert clients[o.vendor].acks[o.mid] == NOT_AUTHORIZED, (expect, o.topic)
                continue
            assert clients[o.vendor].acks[o.mid] == 0, (expect, o.topic, clients[o.vendor].acks[o.mid])
            decoded = contract.decode(o.topic, o.payload, now_s * 1000)
            if expect == ACCEPTED:
                assert isinstance(decoded, Accepted), (o.example.markers, decoded)
                for reading in decoded.readings:
                    key = (reading.kind, reading.sensor_id, reading.ts)
                    expected_points[key] = {**expected_points.get(key, {}), **reading.values}
            else:
                expected_rejects[base64.b64encode(o.payload).decode()] = (expect, o.vendor)
        assert expected_points and expected_rejects

        deadline = time.monotonic() + 30
        while True:
            received = {message["payload_b64"]: (topic, message) for _, topic, message in rejects}
            missing_rejects = expected_rejects.keys() - received.keys()
            missing_points = {}
            for (kind, sensor_id, ts), values in expected_points.items():
                found = stored_points(stack, kind, sensor_id, [ts]).get(ts, {})
                if any(found.get(name) != value for name, value in values.items()):
                    missing_points[(kind, sensor_id, ts)] = (values, found)
            if not missing_rejects and not missing_points:
                break
            assert time.monotonic() < deadline, (
                f"{len(missing_points)} readings not in InfluxDB (e.g. {list(missing_points.items())[:2]}), "
                f"{len(missing_rejects)} rejects not received"
            )
            time.sleep(0.25)
        time.sleep(0.5)  # would a reject reach another vendor too?
        for payload_b64, (code, vendor) in expected_rejects.items():
            reject_on, message = received[payload_b64]
            # The guide: subscribing to smartcity/dlq/v1/# delivers only your own sensors' rejects.
            assert [v for v, _, m in rejects if m["payload_b64"] == payload_b64] == [vendor]
            assert message["code"] == code and message["detail"]
            assert reject_on == reject_topic(message["topic"]) != MALFORMED_REJECT_TOPIC
            assert set(message) == {"code", "detail", "topic", "received_at", "payload_b64"}
    finally:
        for client in clients.values():
            client.close()


def test_the_guides_connect_examples_publish_over_tls_and_the_readings_land(
    stack: StackHandle, ingest: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """The `mosquitto_pub` line and the paho script of 'Connect', run as written with the operator's values."""
    blocks = connect_examples(GUIDE.read_text())
    assert set(blocks) == {"sh", "python"}, blocks.keys()
    shutil.copy(stack.ca_file, tmp_path / CA_FILE_NAME)  # the file the operator hands over
    vendor = re.search(r" -u (\S+)", blocks["sh"])
    assert vendor is not None
    password = stack.mqtt_password(vendor[1])

    def as_handed_over(text: str) -> str:
        text = text.replace(BROKER_HOST_PLACEHOLDER, "127.0.0.1").replace(PASSWORD_PLACEHOLDER, password)
        return text.replace(str(MQTTS_PORT), str(stack.mqtt_tls_port))

    line = restamp(as_handed_over(blocks["sh"]), int(time.time()) - EXAMPLE_RECEIVED_MS // 1000)
    started_ms = int(time.time() * 1000)
    shell = subprocess.run(["sh", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0 and not shell.stderr, shell.stderr
    (tmp_path / "vendor.py").write_text(as_handed_over(blocks["python"]))
    script = subprocess.run([sys.executable, "vendor.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert script.returncode == 0, script.stderr

    topic_match, payload_match = re.search(r" -t (\S+)", line), re.search(r" -m '(.*)'", line)
    assert topic_match is not None and payload_match is not None
    topic = parse_topic(topic_match[1])
    assert topic is not None
    shell_ts = int(datetime.fromisoformat(json.loads(payload_match[1])["ts"]).timestamp() * 1000)
    deadline = time.monotonic() + 60
    while True:
        found = stored_points(stack, topic.kind, topic.sensor_id, [min(shell_ts, started_ms), int(time.time() * 1000)])
        from_script = [ts for ts in found if ts >= started_ms and ts != shell_ts]
        if shell_ts in found and from_script:
            break
        assert time.monotonic() < deadline, f"stored: {found} (shell reading at {shell_ts})"
        time.sleep(0.5)
