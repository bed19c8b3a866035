"""Broker accounts from the registry: each vendor publishes only as its own sensors, reads only its own rejects."""

from __future__ import annotations

import base64
import json
import queue
import stat
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from deploy import broker_auth
from deploy.acl import AclError, registry_acl_rules, vendor_acl_rules, write_broker_files
from sensors.contract import reject_topic
from sensors.registry import BUILTIN_DIR, default_registry, load_registry
from tests.sensors.test_registry import NEW_KIND
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

REGISTRY = default_registry()
AIRSENSE = "siam-airsense"
HYDROMET = "andaman-hydromet"


def own_sensor(vendor: str) -> str:
    return REGISTRY.sensors_of(vendor=vendor)[0].topic


def parse_acl(text: str) -> dict[str, set[str]]:
    sections: dict[str, set[str]] = {}
    user = ""
    for line in text.splitlines():
        if line.startswith("user "):
            user = line[len("user ") :]
            sections[user] = set()
        elif line.startswith("topic "):
            sections[user].add(line)
    return sections


def test_every_vendor_may_write_exactly_its_own_sensors_and_read_their_rejects() -> None:
    rules = registry_acl_rules(REGISTRY)
    assert set(rules) == {"admin", "ingest", *REGISTRY.vendors}
    for vendor in REGISTRY.vendors:
        sensors = REGISTRY.sensors_of(vendor=vendor)
        writes = {r.topic for r in rules[vendor] if r.access == "write"}
        reads = {r.topic for r in rules[vendor] if r.access == "read"}
        assert writes == {s.topic for s in sensors}
        assert reads == {reject_topic(s.topic) for s in sensors}
        assert len(rules[vendor]) == 2 * len(sensors)
        assert not any("#" in r.topic or "+" in r.topic for r in rules[vendor])
    assert {(r.access, r.topic) for r in rules["ingest"]} == {
        ("read", "smartcity/v1/#"),
        ("readwrite", "smartcity/dlq/#"),
        ("read", "$SYS/#"),
    }


def test_a_vendor_named_like_a_platform_user_is_refused(tmp_path: Path) -> None:
    extra = tmp_path / "admin-vendor.yaml"
    extra.write_text("vendors:\n  - {id: admin, name: Sneaky}\n")
    with pytest.raises(AclError, match="vendor id 'admin'"):
        vendor_acl_rules(load_registry([BUILTIN_DIR, extra]))


@pytest.mark.parametrize(
    ("vendor", "message"),
    [
        ("siam-airsense-labs", "namespace of vendor 'siam-airsense'"),  # siam-airsense could use its ids
        ("smartcity", "platform's client ids"),  # it would own ingest's smartcity-ingest
    ],
)
def test_a_vendor_inside_another_accounts_client_id_namespace_is_refused(
    tmp_path: Path, vendor: str, message: str
) -> None:
    extra = tmp_path / "overlap.yaml"
    extra.write_text(f"vendors:\n  - {{id: {vendor}, name: Overlap}}\n")
    with pytest.raises(AclError, match=message):
        vendor_acl_rules(load_registry([BUILTIN_DIR, extra]))


def test_sensors_acl_writes_hashed_files_and_keeps_passwords(tmp_path: Path) -> None:
    out, home = tmp_path / "broker", tmp_path / "home"
    command = [sys.executable, "-m", "deploy.cli", "sensors", "acl", "--out", str(out), "--home", str(home)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    secrets = home / "secrets" / "mqtt-users.json"
    passwords = json.loads(secrets.read_text())
    assert set(passwords) == {"admin", "ingest", *REGISTRY.vendors}
    for path in (secrets, out / "passwd", out / "acl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    hashed = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert set(hashed) == set(passwords)
    for user, line in hashed.items():
        _, _, iterations, salt, _ = line.split("$")
        assert line == broker_auth.hash_password(passwords[user], base64.b64decode(salt))
        assert iterations == "101"
    sections = parse_acl((out / "acl").read_text())
    assert f"topic write {own_sensor(AIRSENSE)}" in sections[AIRSENSE]
    assert f"topic write {own_sensor(HYDROMET)}" not in sections[AIRSENSE]
    # Running it again (e.g. after a registry change) keeps every existing password.
    second = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert json.loads(secrets.read_text()) == passwords


def test_sensors_acl_names_a_broken_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "home" / "secrets" / "mqtt-users.json"
    secrets.parent.mkdir(parents=True)
    secrets.write_text("{not json")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "sensors",
            "acl",
            "--out",
            str(tmp_path / "o"),
            "--home",
            str(secrets.parents[1]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("smartcity: error: ") and str(secrets) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- against the real broker of the `stack` fixture (started by Stack.up with the default rules) ------------------


def connect(stack: StackHandle, user: str, password: str | None = None) -> tuple[mqtt.Client, str]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password if password is not None else stack.mqtt_password(user))
    reasons: queue.Queue[str] = queue.Queue()
    client.on_connect = lambda c, u, f, reason, p: reasons.put(str(reason))
    client.connect("127.0.0.1", stack.mqtt_port)
    client.loop_start()
    return client, reasons.get(timeout=10)


def publish_ack(client: mqtt.Client, topic: str, payload: bytes) -> str:
    """Publish at QoS 1 and return the PUBACK reason the broker answered with."""
    acks: queue.Queue[str] = queue.Queue()
    client.on_publish = lambda c, u, mid, reason, p: acks.put(str(reason))
    client.publish(topic, payload, qos=1)
    return acks.get(timeout=10)


def collector(stack: StackHandle, user: str, topic: str) -> tuple[mqtt.Client, queue.Queue[tuple[str, bytes]]]:
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client, reason = connect(stack, user)
    assert reason == "Success"
    client.on_message = lambda c, u, msg: received.put((msg.topic, bytes(msg.payload)))
    subscribed: queue.Queue[list[str]] = queue.Queue()
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.put([str(code) for code in codes])
    client.subscribe(topic, qos=1)
    subscribed.get(timeout=10)
    return client, received


def drain(received: queue.Queue[tuple[str, bytes]], wait_s: float) -> list[tuple[str, bytes]]:
    time.sleep(wait_s)
    items = []
    while not received.empty():
        items.append(received.get())
    return items


def close(*clients: mqtt.Client) -> None:
    for client in clients:
        client.disconnect()
        client.loop_stop()


def test_a_vendor_publishes_to_its_own_sensor(stack: StackHandle) -> None:
    admin, received = collector(stack, "admin", "smartcity/v1/#")
    vendor, reason = connect(stack, AIRSENSE)
    try:
        assert reason == "Success"
        topic = own_sensor(AIRSENSE)
        assert publish_ack(vendor, topic, b'{"ts": 1, "values": {}}') == "Success"
        assert drain(received, 0.3) == [(topic, b'{"ts": 1, "values": {}}')]
    finally:
        close(admin, vendor)


def test_a_vendor_cannot_publish_as_another_vendors_sensor(stack: StackHandle) -> None:
    admin, received = collector(stack, "admin", "smartcity/v1/#")
    vendor, _ = connect(stack, AIRSENSE)
    try:
        foreign = own_sensor(HYDROMET)
        unknown = "smartcity/v1/phuket/air_quality/pkt-aq-999"
        for topic in (foreign, unknown, "smartcity/dlq/v1/phuket/air_quality/pkt-aq-001"):
            assert publish_ack(vendor, topic, b"spoofed") == "Not authorized", topic
        assert drain(received, 0.3) == []
    finally:
        close(admin, vendor)


def test_a_vendor_subscribed_to_everything_sees_only_its_own_rejects(stack: StackHandle) -> None:
    vendor, received = collector(stack, AIRSENSE, "#")
    admin, _ = connect(stack, "admin")
    mine = own_sensor(AIRSENSE)
    theirs = own_sensor(HYDROMET)
    try:
        for topic in (mine, theirs, reject_topic(theirs), reject_topic(mine), "smartcity/other"):
            admin.publish(topic, topic.encode(), qos=1).wait_for_publish(10)
        assert drain(received, 0.5) == [(reject_topic(mine), reject_topic(mine).encode())]
    finally:
        close(admin, vendor)


def test_a_wrong_password_is_refused(stack: StackHandle) -> None:
    client, reason = connect(stack, AIRSENSE, password="not-the-password")
    close(client)
    assert reason in {"Bad user name or password", "Not authorized"}


def test_stack_up_again_with_a_new_registry_opens_accounts_without_restart(
    private_stack: StackHandle, tmp_path: Path
) -> None:
    extra = tmp_path / "river.yaml"
    extra.write_text(NEW_KIND)
    registry = load_registry([BUILTIN_DIR, extra])
    before = private_stack.mosquitto.running_pid()
    private_stack.stack.up(mqtt_port=private_stack.mqtt_port, influx_port=private_stack.influx_port, registry=registry)
    assert private_stack.mosquitto.running_pid() == before  # reloaded with SIGHUP, not restarted
    time.sleep(0.3)
    admin, received = collector(private_stack, "admin", "smartcity/v1/#")
    vendor, reason = connect(private_stack, "flowtech")
    try:
        assert reason == "Success"
        flow = registry.sensors_of(kind="river_flow")[0].topic
        assert publish_ack(vendor, flow, b"{}") == "Success"
        assert publish_ack(vendor, own_sensor(AIRSENSE), b"{}") == "Not authorized"
        assert drain(received, 0.3) == [(flow, b"{}")]
    finally:
        close(admin, vendor)
    # write_broker_files derives the same accounts for a deployment outside the local stack.
    _, acl_file, users = write_broker_files(registry, tmp_path / "out", tmp_path / "users.json")
    assert "flowtech" in users
    assert f"topic write {flow}" in parse_acl(acl_file.read_text())["flowtech"]
