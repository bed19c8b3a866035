"""`smartcity simulate` against the real broker: the manifest is exactly what a subscriber receives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from deploy.servers import free_port
from deploy.tls import TlsFiles, ensure_certificates
from ingest.history import History
from sensors.contract import Accepted, Contract, Rejected
from sensors.registry import BUILTIN_DIR, Registry, default_registry, load_registry
from tests.sensors.test_registry import NEW_KIND
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

REGISTRY = default_registry()


class Received:
    """Everything an admin subscriber on smartcity/v1/# gets, with the time it got it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.lock = threading.Lock()

    def add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append((topic, payload, int(time.time() * 1000)))

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[tuple[str, bytes, int]]:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything beyond `count` would be a bug: give it a moment to show
        with self.lock:
            return list(self.messages)


@contextmanager
def subscriber(stack: StackHandle) -> Iterator[Received]:
    received = Received()
    client = stack.mqtt_client("admin")
    client.on_message = lambda c, u, msg: received.add(msg.topic, bytes(msg.payload))
    done = threading.Event()
    client.on_subscribe = lambda *args: done.set()
    client.subscribe("smartcity/v1/#", qos=1)
    assert done.wait(10)
    try:
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def simulate(stack: StackHandle, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "simulate", *args],
        env=env or environment(stack),
        capture_output=True,
        text=True,
        timeout=300,
    )


def environment(stack: StackHandle) -> dict[str, str]:
    """The stack's SMARTCITY_* settings (its home holds the broker passwords)."""
    return {**os.environ, **stack.env()}


def per_sensor(messages: list[tuple[str, bytes, int]]) -> Counter[str]:
    return Counter(topic.rsplit("/", 1)[-1] for topic, _, _ in messages)


def check_manifest_against(
    manifest: dict[str, Any], messages: list[tuple[str, bytes, int]], registry: Registry
) -> None:
    """Per sensor, the manifest's messages are what arrived; accepted/rejected as the contract decides."""
    totals = manifest["totals"]
    assert totals["messages"] == len(messages)
    counted = {sensor_id: s["messages"] for sensor_id, s in manifest["sensors"].items() if s["messages"]}
    assert counted == dict(per_sensor(messages))
    contract = Contract(registry)
    history = History(contract.max_age_ms)  # what ingest adds to the contract: `conflict`
    accepted: Counter[tuple[str, int]] = Counter()
    rejected: Counter[str] = Counter()
    for topic, payload, received_ms in messages:
        decoded = contract.decode(topic, payload, received_ms)
        if isinstance(decoded, Accepted) and history.admit(decoded.readings, received_ms) is not None:
            rejected["conflict"] += 1
        elif isinstance(decoded, Accepted):
            accepted.update((r.sensor_id, r.ts) for r in decoded.readings)
        else:
            assert isinstance(decoded, Rejected)
            rejected[decoded.code.value] += 1
    assert len(accepted) == totals["good"]  # distinct (sensor, ts): what InfluxDB must hold
    assert sum(accepted.values()) == totals["good"] + totals["duplicates"]
    assert dict(rejected) == totals["rejected"]
    # The hourly rows add up to the totals, for audit to join on (sensor_id, hour).
    assert sum(row["good"] for row in manifest["readings"]) == totals["good"]
    assert sum(row["duplicates"] for row in manifest["readings"]) == totals["duplicates"]
    assert sum(row["count"] for row in manifest["rejects"]) == sum(totals["rejected"].values())
    assert all(row["hour"].endswith(":00:00Z") for row in manifest["readings"] + manifest["rejects"])
    assert sum(v["messages"] for v in manifest["vendors"].values()) == totals["messages"]


def test_manifest_totals_equal_what_the_broker_delivered_with_every_fault(stack: StackHandle, tmp_path: Path) -> None:
    faults = (
        "default,malformed_json=0.02,out_of_range=0.02,unit_mismatch=0.02,ts_in_future=0.02,ts_too_old=0.02,"
        "unknown_sensor=0.02,duplicate=0.03,conflict=0.02,late=0.02,out_of_order=0.02,silent=0.05"
    )
    path = tmp_path / "manifest.json"
    with subscriber(stack) as received:
        result = simulate(
            stack, "--from", "now-3h", "--to", "now-2h", "--sensors", "120", "--faults", faults, "--manifest", str(path)
        )
        assert result.returncode == 0, result.stderr
        manifest = json.loads(path.read_text())
        messages = received.wait_for(manifest["totals"]["messages"])
    assert result.stdout.startswith("simulate: ") and len(result.stdout.strip().splitlines()) == 1
    assert str(path) in result.stdout
    check_manifest_against(manifest, messages, REGISTRY)
    totals = manifest["totals"]
    assert set(totals["rejected"]) == {
        "invalid_json",
        "out_of_range",
        "unit_mismatch",
        "ts_in_future",
        "ts_too_old",
        "unknown_sensor",
        "conflict",
    }
    assert totals["refused"] == {} and totals["unconfirmed"] == 0
    assert totals["late"] > 0 and totals["out_of_order"] > 0 and totals["duplicates"] > 0
    assert manifest["silent_sensors"] and all(manifest["sensors"][s]["silent"] for s in manifest["silent_sensors"])
    assert not set(manifest["silent_sensors"]) & set(per_sensor(messages))
    gateway = manifest["vendors"]["_gateway"]
    assert gateway["rejected"] == {"unknown_sensor": gateway["messages"]} and gateway["messages"] > 0
    assert manifest["run"]["mode"] == "replay" and manifest["run"]["interrupted"] is False


def test_several_processes_send_what_one_process_sends_in_one_manifest(stack: StackHandle, tmp_path: Path) -> None:
    faults = "default,unknown_sensor=0.02,duplicate=0.03,conflict=0.02,late=0.02,silent=0.05,drop=0.01"
    start = (int(time.time()) // 60 - 180) * 60_000  # one fixed range for both runs
    window = ("--from", str(start), "--to", str(start + 3_600_000))
    args = (*window, "--sensors", "120", "--faults", faults, "--seed", "7")
    one, three = tmp_path / "one.json", tmp_path / "three.json"
    result = simulate(stack, *args, "--manifest", str(one))
    assert result.returncode == 0, result.stderr
    with subscriber(stack) as received:
        result = simulate(stack, *args, "--processes", "3", "--manifest", str(three))
        assert result.returncode == 0, result.stderr
        manifest = json.loads(three.read_text())
        messages = received.wait_for(manifest["totals"]["messages"])
    check_manifest_against(manifest, messages, REGISTRY)
    single = json.loads(one.read_text())
    assert manifest["run"]["processes"] == 3 and single["run"]["processes"] == 1
    # The same readings, faults, drops, silent sensors and made-up gateway sensors, counted the same way.
    for key in ("totals", "vendors", "sensors", "readings", "silent_sensors"):
        assert manifest[key] == single[key], key
    assert manifest["totals"]["dropped"] > 0 and manifest["vendors"]["_gateway"]["messages"] > 0


def test_a_sensor_the_broker_does_not_allow_is_refused_and_counted_apart(stack: StackHandle, tmp_path: Path) -> None:
    # The registry knows one more siam-airsense sensor than the broker's ACL (made from the built-in registry).
    extra = tmp_path / "extra.yaml"
    extra.write_text("sensors:\n  - {id: pkt-aq-777, kind: air_quality, vendor: siam-airsense, site: old-town}\n")
    path = tmp_path / "manifest.json"
    with subscriber(stack) as received:
        result = simulate(
            stack,
            *("--registry", str(BUILTIN_DIR), "--registry", str(extra), "--sensors", "1000"),
            *("--from", "now-30m", "--to", "now-20m", "--manifest", str(path)),
        )
        assert result.returncode == 0, result.stderr
        manifest = json.loads(path.read_text())
        messages = received.wait_for(manifest["totals"]["messages"])
    assert manifest["refused"] == [
        {
            "vendor": "siam-airsense",
            "sensor_id": "pkt-aq-777",
            "topic": "smartcity/v1/phuket/air_quality/pkt-aq-777",
            "reason": "Not authorized",
            "count": 10,
        }
    ]
    assert manifest["sensors"]["pkt-aq-777"]["messages"] == 0
    assert "pkt-aq-777" not in per_sensor(messages)
    assert manifest["totals"]["refused"] == {"Not authorized": 10}
    assert "10 refused" in result.stdout
    check_manifest_against(manifest, messages, load_registry([BUILTIN_DIR, extra]))


def test_a_live_run_keeps_its_rate_and_duration(stack: StackHandle, tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    with subscriber(stack) as received:
        started = int(time.time() * 1000)
        result = simulate(stack, "--rate", "200", "--duration", "2", "--sensors", "60", "--manifest", str(path))
        assert result.returncode == 0, result.stderr
        manifest = json.loads(path.read_text())
        messages = received.wait_for(manifest["totals"]["messages"])
    check_manifest_against(manifest, messages, REGISTRY)
    assert 300 <= len(messages) <= 460  # 200/s for 2 s; sensors start at their own phase
    contract = Contract(REGISTRY)
    for topic, payload, received_ms in messages:
        decoded = contract.decode(topic, payload, received_ms)
        assert isinstance(decoded, Accepted)
        assert all(started - 1000 <= r.ts <= received_ms for r in decoded.readings)  # stamped now, not ahead


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_stops_cleanly_with_the_manifest_written(stack: StackHandle, tmp_path: Path, processes: int) -> None:
    path = tmp_path / "manifest.json"
    command = ["simulate", "--rate", "300", "--processes", str(processes), "--manifest", str(path)]
    with subscriber(stack) as received:
        process = subprocess.Popen(  # the signal goes to the main process only: it passes it on
            [sys.executable, "-m", "deploy.cli", *command],
            env=environment(stack),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            received.wait_for(200, timeout_s=30)
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130, stderr
        manifest = json.loads(path.read_text())
        messages = received.wait_for(manifest["totals"]["messages"])
    assert "interrupted" in stdout and "Traceback" not in stderr
    assert manifest["run"]["interrupted"] is True and manifest["totals"]["unconfirmed"] == 0
    check_manifest_against(manifest, messages, REGISTRY)


def test_a_new_kind_is_published_with_its_vendors_own_account(private_stack: StackHandle, tmp_path: Path) -> None:
    extra = tmp_path / "river.yaml"
    extra.write_text(NEW_KIND)
    registry = load_registry([BUILTIN_DIR, extra])
    private_stack.stack.up(mqtt_port=private_stack.mqtt_port, influx_port=private_stack.influx_port, registry=registry)
    path = tmp_path / "manifest.json"
    with subscriber(private_stack) as received:
        result = simulate(
            private_stack,
            *("--registry", str(BUILTIN_DIR), "--registry", str(extra), "--sensors", "40"),
            *("--from", "now-2h", "--to", "now-1h", "--manifest", str(path)),
        )
        assert result.returncode == 0, result.stderr
        manifest = json.loads(path.read_text())
        messages = received.wait_for(manifest["totals"]["messages"])
    check_manifest_against(manifest, messages, registry)
    flowtech = manifest["vendors"]["flowtech"]
    assert flowtech["good"] == 3 * 12 and flowtech["refused"] == {}  # 3 gauges of the 40, every 300 s for 1 h


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "now-1h", "--rate", "10"], "--rate and --duration are for live runs"),
        (["--speed", "10x"], "--speed needs --from"),
        (["--from", "now-1h", "--to", "now-2h"], "is not before --to"),
        (["--from", "now-1h", "--to", "2099-01-01"], "is in the future"),
        (["--faults", "bogus=0.1"], "unknown fault 'bogus'"),
        (["--from", "yesterday"], "is not a time like"),
        (["--from", "now-1h", "--speed", "fast"], "is not 'max' or a positive number"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(stack: StackHandle, args: list[str], message: str) -> None:
    result = simulate(stack, *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_missing_credentials_or_broker_are_one_line_and_exit_1(stack: StackHandle, tmp_path: Path) -> None:
    env = environment(stack) | {"SMARTCITY_HOME": str(tmp_path / "empty")}
    result = simulate(stack, "--duration", "1", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("smartcity: error: ") and "mqtt-users.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    env = environment(stack) | {"SMARTCITY_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"}
    result = simulate(stack, "--duration", "1", env=env)
    assert result.returncode == 1 and "cannot reach the broker" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_simulate_publishes_over_tls_and_refuses_a_broker_of_another_ca(stack: StackHandle, tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    tls_env = environment(stack) | {"SMARTCITY_MQTT_URL": f"mqtts://127.0.0.1:{stack.mqtt_tls_port}"}
    assert tls_env["SMARTCITY_MQTT_CA_FILE"] == str(stack.ca_file)  # stack up's env names the CA
    with subscriber(stack) as received:
        result = simulate(stack, "--rate", "50", "--duration", "1", "--sensors", "10", "--manifest", str(path),
                          env=tls_env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        manifest = json.loads(path.read_text())
        assert manifest["run"]["broker"] == f"mqtts://127.0.0.1:{stack.mqtt_tls_port}"
        messages = received.wait_for(manifest["totals"]["messages"])
    check_manifest_against(manifest, messages, REGISTRY)

    other = TlsFiles.in_folders(tmp_path / "other", tmp_path / "other")
    ensure_certificates(other, [])
    result = simulate(stack, "--duration", "1", "--mqtt-ca-file", str(other.ca_cert), env=tls_env)
    assert result.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
