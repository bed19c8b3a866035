"""sensors/broker_url.py: the one parser of SMARTCITY_MQTT_URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensors.broker_url import BrokerAddress, BrokerUrlError


def test_schemes_default_ports_and_decoded_credentials() -> None:
    plain = BrokerAddress.from_url("mqtt://ingest:p%40ss@broker.example")
    assert (plain.host, plain.port, plain.tls, plain.username, plain.password) == (
        "broker.example", 1883, False, "ingest", "p@ss"
    )  # fmt: skip
    tls = BrokerAddress.from_url("mqtts://broker.example")
    assert (tls.port, tls.tls, tls.username) == (8883, True, None)
    assert tls.display == "mqtts://broker.example:8883"
    assert "p@ss" not in repr(plain) and "p@ss" not in plain.display


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tcp://h:1883", "X: scheme must be mqtt:// or mqtts://, got 'tcp'"),
        ("mqtt://u:secret@:1883", "X: no host in 'mqtt://***@:1883'"),
        ("mqtt://u:secret@h:99999", "X: not a URL: Port out of range 0-65535 ('mqtt://***@h:99999')"),
        ("mqtt://h/x", "X: unexpected path '/x'"),
    ],
)
def test_bad_urls_name_the_setting_and_hide_the_password(url: str, message: str) -> None:
    with pytest.raises(BrokerUrlError) as err:
        BrokerAddress.from_url(url, where="X")
    assert str(err.value).startswith(message)
    assert "secret" not in str(err.value)


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BrokerUrlError, match=r"^Y: no such file"):
        BrokerAddress.from_url("mqtts://h", tmp_path / "ca.crt", ca_where="Y")
