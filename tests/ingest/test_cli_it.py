"""`smartcity ingest` as an operator runs it: exit codes and messages, split roles, TLS."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.servers import Mosquitto, free_port
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


@dataclass(kw_only=True)
class TlsMosquitto(Mosquitto):
    """The stack's Mosquitto configuration plus a TLS listener (no fixture offers one)."""

    tls_port: int
    cert_dir: Path

    def write_config(self) -> None:
        super().write_config()
        # Mosquitto 2.0 loads its certificates after it drops to its user (root-started: `mosquitto`).
        self.hand_over([self.cert_dir / name for name in ("ca.pem", "server.pem", "server.key")])
        with open(self.config_path, "a") as config:
            config.write(
                f"listener {self.tls_port} 127.0.0.1\n"
                f"cafile {self.cert_dir / 'ca.pem'}\n"
                f"certfile {self.cert_dir / 'server.pem'}\n"
                f"keyfile {self.cert_dir / 'server.key'}\n"
            )

    def busy_ports(self) -> list[int]:
        return [self.port, self.tls_port]


def make_certificates(folder: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1."""
    folder.mkdir(parents=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=smartcity test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip


def test_mqtts_with_a_private_ca(stack: StackHandle, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_certificates(certs)
    broker = TlsMosquitto(
        data_dir=tmp_path / "mosquitto",
        port=free_port(),
        tls_port=free_port(),
        cert_dir=certs,
        password_file=stack.home / "mosquitto" / "passwd",
        acl_file=stack.home / "mosquitto" / "acl",
    )
    broker.start()
    try:
        items = messages(500, slot=21)
        env = ingest_env(stack, tmp_path / "home", client_id="it-tls")
        env["SMARTCITY_MQTT_URL"] = f"mqtts://ingest:{stack.mqtt_password('ingest')}@127.0.0.1:{broker.tls_port}"
        env["SMARTCITY_MQTT_CA_FILE"] = str(certs / "ca.pem")
        with IngestProcess(env, tmp_path / "ingest.log") as ingest:
            ingest.wait_log(f"connected to mqtts://ingest@127.0.0.1:{broker.tls_port}")
            plain = StackHandle(stack.stack, stack.ports.__class__(mqtt=broker.port, influx=stack.influx_port))
            publisher = Publisher(plain)
            publisher.publish(items)
            publisher.close()
            wait_for_points(stack, items, timeout_s=30)
            assert ingest.terminate() == 0
    finally:
        broker.stop()
