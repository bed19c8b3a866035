"""The local stack's MQTT over TLS: vendors on the TLS listener, plain MQTT on the loopback only."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import pytest

from deploy import broker_auth
from deploy.health import mqtt_health
from deploy.tls import TlsFiles, certificate_names, ensure_certificates
from sensors.broker_url import BrokerAddress
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

VENDOR, TOPIC = "siam-airsense", "smartcity/v1/phuket/air_quality/pkt-aq-001"


def publish(stack: StackHandle, port: int, ca_file: Path, host: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_pub", "-h", host, "-p", str(port), "--cafile", str(ca_file), "-u", VENDOR,
         "-P", stack.mqtt_password(VENDOR), "-V", "mqttv5", "-q", "1", "-t", TOPIC, "-m", "{}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_keys_are_private_and_the_env_names_the_ca(stack: StackHandle) -> None:
    files = stack.stack.tls_files
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname()} <= set(certificate_names(files.server_cert))
    assert stack.env()["SMARTCITY_MQTT_CA_FILE"] == str(files.ca_cert)


def test_publish_over_tls_with_the_stacks_ca(stack: StackHandle) -> None:
    address = BrokerAddress("127.0.0.1", stack.mqtt_tls_port, tls=True, ca_file=stack.ca_file)
    ok, detail = mqtt_health(address, broker_auth.ADMIN_USER, stack.mqtt_password(broker_auth.ADMIN_USER))
    assert ok, detail
    assert "over TLS" in detail
    result = publish(stack, stack.mqtt_tls_port, stack.ca_file)
    assert result.returncode == 0, result.stderr


def test_a_broker_certificate_from_another_ca_is_refused(stack: StackHandle, tmp_path: Path) -> None:
    other = TlsFiles.in_folders(tmp_path, tmp_path)
    ensure_certificates(other, [])
    address = BrokerAddress("127.0.0.1", stack.mqtt_tls_port, tls=True, ca_file=other.ca_cert)
    ok, detail = mqtt_health(address, broker_auth.ADMIN_USER, stack.mqtt_password(broker_auth.ADMIN_USER))
    assert not ok and "CERTIFICATE_VERIFY_FAILED" in detail, detail
    result = publish(stack, stack.mqtt_tls_port, other.ca_cert)
    assert result.returncode != 0, "mosquitto_pub accepted a broker its CA did not sign"


def test_plain_mqtt_is_refused_from_a_non_loopback_address(stack: StackHandle) -> None:
    # The plain listener is bound to 127.0.0.1; 127.0.0.2 stands for any other address of the machine.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", stack.mqtt_port), timeout=5).close()
    # The TLS listener answers there (every interface); the certificate does not name 127.0.0.2.
    socket.create_connection(("127.0.0.2", stack.mqtt_tls_port), timeout=5).close()
    address = BrokerAddress("127.0.0.2", stack.mqtt_tls_port, tls=True, ca_file=stack.ca_file)
    ok, detail = mqtt_health(address, broker_auth.ADMIN_USER, stack.mqtt_password(broker_auth.ADMIN_USER))
    assert not ok and "CERTIFICATE_VERIFY_FAILED" in detail, detail


def test_stack_status_reports_both_listeners(stack: StackHandle) -> None:
    statuses = {s.name: s for s in stack.stack.status()}
    assert statuses["mosquitto"].healthy and statuses["mosquitto (tls)"].healthy, statuses
    assert statuses["mosquitto (tls)"].port == stack.mqtt_tls_port
