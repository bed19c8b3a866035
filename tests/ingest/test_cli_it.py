"""`smartcity ingest` as an operator runs it: exit codes and messages, split roles, TLS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.ingest.helpers import IngestProcess, Publisher, ingest_env, messages, wait_for_points
from tests.servers import StackHandle

pytestmark = [pytest.mark.integration, pytest.mark.system]


def run_ingest(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "ingest", "--quiet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_usage_errors_exit_2_and_bad_settings_exit_1_naming_the_key(stack: StackHandle, tmp_path: Path) -> None:
    env = ingest_env(stack, tmp_path / "home")
    usage = run_ingest(env, "--role", "everything")
    assert usage.returncode == 2
    assert "'everything' is not one of 'all', 'consume', 'write'" in usage.stderr
    bad = run_ingest({**env, "SMARTCITY_INGEST_FLUSH_INTERVAL_MS": "500"})
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        "smartcity: error: SMARTCITY_INGEST_FLUSH_INTERVAL_MS ([ingest] flush_interval_ms): "
        "must be between 1 and 50, got 500"
    )


def test_refused_credentials_exit_1_with_one_line(stack: StackHandle, tmp_path: Path) -> None:
    env = ingest_env(stack, tmp_path / "home")
    env["SMARTCITY_MQTT_URL"] = f"mqtt://ingest:wrong@127.0.0.1:{stack.mqtt_port}"
    result = run_ingest(env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("smartcity: error: broker mqtt://ingest@127.0.0.1:")
    assert "refused client smartcity-ingest" in last and "wrong" not in result.stderr


def test_separate_consume_and_write_processes(stack: StackHandle, tmp_path: Path) -> None:
    items = messages(4000, slot=20)
    home = tmp_path / "home"
    consume_env = ingest_env(stack, home, client_id="split-role", role="consume")
    write_env = ingest_env(stack, home, client_id="writer", role="write")
    with (
        IngestProcess(consume_env, tmp_path / "consume.log") as consumer,
        IngestProcess(write_env, tmp_path / "write.log") as writer,
    ):
        consumer.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish(items)
        publisher.close()
        wait_for_points(stack, items, timeout_s=30)
        assert consumer.terminate() == 0
        assert writer.terminate() == 0
    assert "writing stream split-role to InfluxDB" in writer.log.read_text()
    assert not (home / "spool" / "writer").exists(), "a writer has no stream of its own"


def test_mqtts_with_the_stacks_ca(stack: StackHandle, tmp_path: Path) -> None:
    """Ingest over the stack's TLS listener, verifying it with the CA `stack up` created."""
    items = messages(500, slot=21)
    env = ingest_env(stack, tmp_path / "home", client_id="it-tls")
    env["SMARTCITY_MQTT_URL"] = f"mqtts://ingest:{stack.mqtt_password('ingest')}@127.0.0.1:{stack.mqtt_tls_port}"
    env["SMARTCITY_MQTT_CA_FILE"] = str(stack.ca_file)
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log(f"connected to mqtts://ingest@127.0.0.1:{stack.mqtt_tls_port}")
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish(items)
        publisher.close()
        wait_for_points(stack, items, timeout_s=30)
        assert ingest.terminate() == 0
