"""The local stack and the fixtures are real: messages cross the broker, points land in InfluxDB."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import broker_auth
from deploy.servers import ServerError, free_port, pid_alive
from deploy.stack import Stack
from tests.servers import StackHandle

pytestmark = pytest.mark.integration


def test_broker_fixture_delivers_a_message(stack: StackHandle) -> None:
    received: queue.Queue[bytes] = queue.Queue()
    sub = stack.mqtt_client(client_id="fixture-sub")
    sub.on_message = lambda client, userdata, msg: received.put(bytes(msg.payload))
    sub.subscribe("smartcity/test/#", qos=1)
    time.sleep(0.2)
    pub = stack.mqtt_client(client_id="fixture-pub")
    pub.publish("smartcity/test/hello", b"sawasdee", qos=1).wait_for_publish(5)
    try:
        assert received.get(timeout=5) == b"sawasdee"
    finally:
        for client in (sub, pub):
            client.disconnect()
            client.loop_stop()


def test_broker_refuses_anonymous_and_wrong_password(stack: StackHandle) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    for user, password in ((None, None), (broker_auth.ADMIN_USER, "wrong")):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if user:
            client.username_pw_set(user, password)
        reasons: queue.Queue[str] = queue.Queue()
        client.on_connect = lambda c, u, f, reason, p, reasons=reasons: reasons.put(str(reason))
        client.connect("127.0.0.1", stack.mqtt_port)
        client.loop_start()
        try:
            assert reasons.get(timeout=5) in {"Not authorized", "Bad user name or password"}
        finally:
            client.loop_stop()


def test_influx_fixture_writes_and_queries_a_point(stack: StackHandle) -> None:
    import urllib.request

    from deploy.servers import basic_auth

    stack.influx_query('CREATE DATABASE "fixture_check"')
    request = urllib.request.Request(
        f"{stack.influx_url}/write?db=fixture_check&precision=s",
        data=b"probe,city=phuket value=42 1700000000\n",
        method="POST",
    )
    request.add_header("Authorization", basic_auth("admin", stack.influx_admin_password))
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 204
    result = stack.influx_query("SELECT value FROM probe", db="fixture_check")
    assert result["results"][0]["series"][0]["values"] == [["2023-11-14T22:13:20Z", 42]]


def test_influx_refuses_unauthenticated_queries(stack: StackHandle) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.influx_url}/query?q=SHOW+DATABASES", timeout=10)
    assert err.value.code == 401


def test_mosquitto_persistence_is_on_and_writable(stack: StackHandle) -> None:
    conf = stack.mosquitto.config_path.read_text()
    assert "persistence true" in conf
    assert "allow_anonymous false" in conf
    # Mosquitto saves on shutdown; a folder it cannot write would silently disable persistence.
    assert os.access(stack.mosquitto.persistence_dir, os.W_OK)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_stack_up_status_down_twice_leaves_no_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mqtt_port, influx_port = free_port(), free_port()
    started: list[int] = []
    for _ in range(2):
        up = run_cli(
            "stack", "up", "--home", str(home), "--mqtt-port", str(mqtt_port), "--influx-port", str(influx_port)
        )
        assert up.returncode == 0, up.stderr
        status = run_cli("stack", "status", "--home", str(home))
        assert status.returncode == 0, status.stdout + status.stderr
        assert "mosquitto" in status.stdout and "influxdb" in status.stdout
        stack = Stack(home)
        ports = stack.ports()
        assert ports is not None
        pids = [stack.mosquitto(ports).running_pid(), stack.influxdb(ports).running_pid()]
        assert all(pids)
        started += [pid for pid in pids if pid]
        down = run_cli("stack", "down", "--home", str(home))
        assert down.returncode == 0, down.stderr
        assert "mosquitto" in down.stdout
    assert not [pid for pid in started if pid_alive(pid)]
    for name in ("env", "secrets/mqtt-users.json", "secrets/influx-admin.json"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name
    status = run_cli("stack", "status", "--home", str(home))
    assert status.returncode == 1


def test_stack_up_on_a_busy_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "stack", "up", "--home", str(tmp_path), "--mqtt-port", str(port), "--influx-port", str(free_port())
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"smartcity: error: mosquitto: port {port} is already in use"


def test_stack_up_without_binaries_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploy import cli, servers

    monkeypatch.setattr(servers.shutil, "which", lambda *args, **kwargs: None)
    rc = cli.main(["stack", "up", "--home", str(tmp_path), "--mqtt-port", str(free_port())])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mosquitto not found" in err[0]


def test_free_ports_are_below_the_ephemeral_range_so_no_reconnecting_client_can_hold_them() -> None:
    # A client reconnecting to a stopped server on an ephemeral port can be given that very port as its
    # source and connect to itself; the server then cannot restart there (a CI failure of
    # tests/system/test_broker.py's kill -9 test). Ports below the range are never given as sources.
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(port < first_ephemeral for port in ports)
    assert len(ports) > 40  # spread, so parallel workers rarely pick alike


def test_a_damaged_broker_database_fails_the_start_with_what_to_do(private_stack: StackHandle) -> None:
    # A power cut during a save can leave mosquitto.db all null bytes (eclipse-mosquitto/mosquitto#2639).
    # The compose image moves it aside itself (tests/deploy/test_compose_smoke.py); `stack up` says what to do.
    broker = private_stack.mosquitto
    broker.stop()  # saves mosquitto.db
    db = broker.persistence_dir / "mosquitto.db"
    db.write_bytes(bytes(db.stat().st_size))
    with pytest.raises(ServerError) as failed:
        broker.start(detach=True)
    assert "Couldn't open database" in str(failed.value)
    assert f"its persistence file {db} is damaged or unreadable: move it aside" in str(failed.value)
