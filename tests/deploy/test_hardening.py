"""What the servers show a neighbour on the same machine: users, file modes, debug endpoints, limits.

Each test runs the real servers the stack starts (a root-started stack in CI).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from deploy import broker_auth
from deploy.broker_conf import MQTT_MAX_CONNECTIONS, render_mosquitto_conf
from deploy.compose import CONFIG_DIR, AlertDelivery, init_compose
from deploy.servers import BROKER_USER_WHEN_ROOT, free_port
from deploy.stack import BROKER_DIRS_WHEN_ROOT, Stack, StackPorts
from sensors.contract import MAX_PACKET_BYTES
from tests.ingest.helpers import IngestProcess, Publisher, ingest_env, messages, publish_all, wait_for_points
from tests.servers import StackHandle

COMPOSE = Path(__file__).parents[2] / "deploy" / "compose.yaml"
WEBHOOK = AlertDelivery(webhook_url="https://hooks.example/smartcity")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective uid
    raise AssertionError(f"no Uid line for pid {pid}")


def persistent_subscriber(stack: StackHandle, received: list[bytes]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="admin-persistence", protocol=mqtt.MQTTv5)
    client.username_pw_set(broker_auth.ADMIN_USER, stack.mqtt_password(broker_auth.ADMIN_USER))
    subscribed = threading.Event()
    client.on_message = lambda _c, _u, message: received.append(bytes(message.payload))
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe("smartcity/test/persistence", qos=1)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", stack.mqtt_port, clean_start=False, properties=properties)
    client.loop_start()
    assert subscribed.wait(10), "the persistent subscriber did not subscribe"
    return client


def test_a_root_started_broker_is_not_root_and_keeps_its_persistence(private_stack: StackHandle) -> None:
    stack = private_stack
    pid = stack.mosquitto.running_pid()
    assert pid is not None
    expected = pwd.getpwnam(BROKER_USER_WHEN_ROOT).pw_uid if os.geteuid() == 0 else os.geteuid()
    assert process_uid(pid) == expected != 0 or os.geteuid() != 0

    received: list[bytes] = []
    subscriber = persistent_subscriber(stack, received)
    subscriber.disconnect()
    subscriber.loop_stop()
    publisher = Publisher(stack)
    publisher.publish([("smartcity/test/persistence", str(n).encode()) for n in range(50)])
    publisher.close()
    stack.mosquitto.stop()  # SIGTERM: the broker saves its state on the way out
    assert (stack.mosquitto.persistence_dir / "mosquitto.db").exists(), "the broker saved nothing"
    stack.mosquitto.start(detach=True)

    subscriber = persistent_subscriber(stack, received)
    deadline = time.monotonic() + 10
    while len(received) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    subscriber.disconnect()
    subscriber.loop_stop()
    assert sorted(int(p) for p in received) == list(range(50))


def test_a_root_started_stack_in_a_private_folder_gives_the_broker_a_folder_it_can_reach(tmp_path: Path) -> None:
    """`make demo` from a checkout under /root (0700): the broker's user cannot reach HOME/mosquitto."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    stack = Stack(private / "home")
    if os.geteuid() != 0:  # a normal user's broker runs as that user and reaches HOME like any of its files
        assert stack.broker_dir == stack.home / "mosquitto"
        return
    assert stack.broker_dir.parent == BROKER_DIRS_WHEN_ROOT
    try:
        stack.up(mqtt_port=free_port(), influx_port=free_port(), mqtt_tls_port=free_port())
        pid = stack.mosquitto(stack.ports() or StackPorts()).running_pid()
        assert pid is not None and process_uid(pid) == pwd.getpwnam(BROKER_USER_WHEN_ROOT).pw_uid
        assert mode(stack.broker_dir) == 0o700 and mode(BROKER_DIRS_WHEN_ROOT) == 0o711
    finally:
        stack.down()
        shutil.rmtree(stack.broker_dir, ignore_errors=True)


def test_secrets_data_and_spool_are_private(private_stack: StackHandle, tmp_path: Path) -> None:
    stack = private_stack
    home = stack.home
    env = ingest_env(stack, home)
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        items = messages(20, slot=5)
        publish_all(stack, items)
        wait_for_points(stack, items, timeout_s=20)
        assert ingest.terminate() == 0
    stack.mosquitto.stop()  # writes mosquitto.db

    private_dirs = [home / "secrets", home / "influxdb", home / "mosquitto", stack.mosquitto.persistence_dir]
    private_dirs += [d for d in (home / "spool").iterdir() if d.is_dir()]
    assert private_dirs[-1].name == "smartcity-ingest"
    private_files = [home / "env", *(home / "secrets").iterdir(), *(home / "mosquitto").glob("*.conf")]
    private_files += [home / "mosquitto" / "passwd", home / "mosquitto" / "acl"]
    private_files += [*(home / "influxdb" / "meta").glob("*.db"), stack.mosquitto.persistence_dir / "mosquitto.db"]
    private_files += list((home / "spool").glob("*/*.seg"))
    assert len(private_files) > 8 and any(p.suffix == ".seg" for p in private_files)
    assert {str(d): oct(mode(d)) for d in private_dirs if mode(d) != 0o700} == {}
    assert {str(f): oct(mode(f)) for f in private_files if mode(f) & 0o077} == {}
    # What InfluxDB writes for itself: nothing readable by others anywhere under its folder.
    exposed = [p for p in (home / "influxdb").rglob("*") if mode(p) & 0o007 and p.suffix not in (".log", ".pid")]
    assert exposed == []


def test_compose_init_writes_every_broker_file_private(tmp_path: Path) -> None:
    init_compose(tmp_path, alerts=WEBHOOK)
    for name in ("mosquitto.conf", "passwd", "acl"):
        assert mode(tmp_path / "mosquitto" / name) == 0o600, name


def test_influxdb_debug_pprof_is_off(stack: StackHandle) -> None:
    try:
        with urllib.request.urlopen(f"{stack.influx_url}/debug/pprof/", timeout=5) as resp:
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    assert status == 404


def test_the_broker_closes_an_unauthenticated_connection_that_announces_a_big_packet(stack: StackHandle) -> None:
    """Before, the broker kept reading (and holding) up to 2 MiB per connection that never logged in."""
    length = 2 * 1024 * 1024 - 64  # just under the old 2 MiB limit
    varint = bytearray()
    while True:
        byte, length = length % 128, length // 128
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    with socket.create_connection(("127.0.0.1", stack.mqtt_port), timeout=5) as sock:
        sock.sendall(b"\x10" + bytes(varint))  # a CONNECT that says 2 MiB follow
        closed = False
        try:
            for _ in range(64):
                sock.sendall(b"\0" * 1024)
                time.sleep(0.01)
            closed = sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        except TimeoutError:
            closed = False
    assert closed, "the broker still reads a 2 MiB packet from a client that has not logged in"


def test_the_broker_refuses_a_packet_over_the_contract_limit(stack: StackHandle) -> None:
    client = stack.mqtt_client()
    disconnected = threading.Event()
    client.on_disconnect = lambda *args: disconnected.set()
    acked = threading.Event()
    client.on_publish = lambda *args: acked.set()
    client.publish("smartcity/test/too-big", b"x" * MAX_PACKET_BYTES, qos=1)
    assert disconnected.wait(10), "the broker did not close the connection"
    assert not acked.is_set(), "the broker acknowledged a packet over its limit"
    client.loop_stop()


def test_the_broker_config_caps_connections_queue_bytes_and_memory() -> None:
    conf = render_mosquitto_conf(
        port=1883,
        persistence_dir="/data/",
        password_file=None,
        acl_file=None,
        run_as_user=None,
        clientid_plugin="/p.so",
        trusted_users=("admin",),
    )
    settings = dict(line.split(" ", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert int(settings["max_connections"]) == MQTT_MAX_CONNECTIONS > 0
    assert int(settings["max_packet_size"]) == MAX_PACKET_BYTES
    assert 0 < int(settings["max_queued_bytes"]) < int(settings["memory_limit"])
    assert settings["plugin_opt_trusted"] == "admin"


def test_compose_builds_the_plugin_the_generated_config_loads_and_locks_influx_debug(tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    broker = compose["services"]["mosquitto"]
    context = COMPOSE.parent / broker["build"]["context"]
    dockerfile = (context / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for source in copied.split():
            assert (context / source).exists(), source
    command = re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE)
    assert command is not None  # the broker starts through start.sh (tests/deploy/test_compose_smoke.py runs it)
    assert json.loads(command.group(1)) == [
        "/bin/sh",
        "/usr/local/bin/smartcity-mosquitto",
        f"{CONFIG_DIR}/mosquitto.conf",
    ]
    assert "COPY start.sh /usr/local/bin/smartcity-mosquitto\n" in dockerfile
    init_compose(tmp_path, alerts=WEBHOOK)
    conf = (tmp_path / "mosquitto" / "mosquitto.conf").read_text()
    plugin = re.search(r"^plugin (\S+)$", conf, re.MULTILINE)
    assert plugin is not None and f"-o {plugin.group(1)} " in dockerfile
    assert "plugin_opt_trusted admin ingest\n" in conf
    influx = compose["services"]["influxdb"]["environment"]
    assert influx["INFLUXDB_HTTP_AUTH_ENABLED"] == influx["INFLUXDB_HTTP_PPROF_AUTH_ENABLED"] == "true"
    assert influx["INFLUXDB_HTTP_PPROF_ENABLED"] == "true"  # 1.8 guards the debug endpoints only then
