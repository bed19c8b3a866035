"""Ingest settings: sample.toml is the reference (README copy, defaults, config keys); errors name the key."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from ingest.settings import CONFIG_KEYS, SAMPLE_PATH, IngestSettings, MqttSettings, SettingsError

README = SAMPLE_PATH.with_name("README.md")


def sample_defaults() -> dict[str, dict[str, object]]:
    """sample.toml with every `# key = default` line uncommented, parsed as TOML."""
    text = re.sub(r"^# (\w+ = )", r"\1", SAMPLE_PATH.read_text(), flags=re.MULTILINE)
    data = tomllib.loads(text)
    return {
        "": {k: v for k, v in data.items() if not isinstance(v, dict)},
        **{k: v for k, v in data.items() if isinstance(v, dict)},
    }


def test_readme_configuration_is_sample_toml_verbatim() -> None:
    section = README.read_text().split("## Configuration\n", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```\n", 1)[0]
    assert block == SAMPLE_PATH.read_text()


def test_sample_documents_every_setting_with_its_default() -> None:
    defaults = sample_defaults()
    settings = IngestSettings()
    ingest_keys = {f.name for f in fields(IngestSettings)} - {"home", "mqtt"}
    assert set(defaults["ingest"]) == ingest_keys
    for name, documented in defaults["ingest"].items():
        actual = getattr(settings, name)
        if name == "topics":
            actual = ",".join(actual)
        elif actual is None:
            actual = ""
        assert documented == actual, f"[ingest] {name}: sample.toml says {documented!r}, the code {actual!r}"
    assert defaults[""]["home"] == str(settings.home)
    assert defaults["mqtt"] == {"url": MqttSettings().url, "ca_file": ""}


def test_config_keys_are_the_variables_read() -> None:
    names = [env for env, _, _ in CONFIG_KEYS]
    assert "SMARTCITY_INGEST_FLUSH_INTERVAL_MS" in names and "SMARTCITY_MQTT_URL" in names
    assert len(names) == len(set(names))
    assert all(help_text for _, _, help_text in CONFIG_KEYS)


def test_from_env_reads_every_key_and_options_win(tmp_path: Path) -> None:
    environ = {
        "SMARTCITY_HOME": str(tmp_path),
        "SMARTCITY_MQTT_URL": "mqtts://ingest:p%40ss@broker.example:8884",
        "SMARTCITY_INGEST_CLIENT_ID": "ingest-phuket",
        "SMARTCITY_INGEST_TOPICS": "smartcity/v1/phuket/#, smartcity/v1/chiang-mai/+/cm-aq-001",
        "SMARTCITY_INGEST_FLUSH_INTERVAL_MS": "10",
        "SMARTCITY_INGEST_SEGMENT_MAX_MIB": "0.5",
        "SMARTCITY_INGEST_SPOOL_DIR": "",
    }
    s = IngestSettings.from_env(environ, role="consume")
    assert s.role == "consume" and s.client_id == "ingest-phuket"
    assert s.topics == ("smartcity/v1/phuket/#", "smartcity/v1/chiang-mai/+/cm-aq-001")
    assert s.flush_interval_ms == 10 and s.segment_max_mib == 0.5
    assert s.stream_dir == tmp_path / "spool" / "ingest-phuket"
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls, s.mqtt.username, s.mqtt.password) == (
        "broker.example",
        8884,
        True,
        "ingest",
        "p@ss",
    )
    assert "p@ss" not in repr(s) and "p%40ss" not in repr(s)
    shared = IngestSettings.from_env({"SMARTCITY_INGEST_SHARE_GROUP": "ingest"})
    assert shared.subscriptions == ["$share/ingest/smartcity/v1/#"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"SMARTCITY_INGEST_FLUSH_INTERVAL_MS": "80"},
            "SMARTCITY_INGEST_FLUSH_INTERVAL_MS ([ingest] flush_interval_ms): must be between 1 and 50, got 80",
        ),
        (
            {"SMARTCITY_INGEST_FLUSH_INTERVAL_MS": "fast"},
            "SMARTCITY_INGEST_FLUSH_INTERVAL_MS ([ingest] flush_interval_ms): must be an integer, got 'fast'",
        ),
        (
            {"SMARTCITY_INGEST_ROLE": "both"},
            "SMARTCITY_INGEST_ROLE ([ingest] role): must be one of all, consume, write",
        ),
        (
            {"SMARTCITY_INGEST_CLIENT_ID": "a/b"},
            "SMARTCITY_INGEST_CLIENT_ID ([ingest] client_id): 'a/b' is not a usable client id",
        ),
        (
            {"SMARTCITY_INGEST_TOPICS": "sensors/#"},
            "SMARTCITY_INGEST_TOPICS ([ingest] topics): 'sensors/#' is outside the reading topics",
        ),
        ({"SMARTCITY_INGEST_TOPICS": "smartcity/v1/#/x"}, "is not a valid MQTT topic filter"),
        ({"SMARTCITY_INGEST_TOPICS": "$share/g/smartcity/v1/#"}, "set share_group instead"),
        ({"SMARTCITY_INGEST_SHARE_GROUP": "a/b"}, "SMARTCITY_INGEST_SHARE_GROUP ([ingest] share_group)"),
        (
            {"SMARTCITY_INGEST_RECEIVE_MAXIMUM": "70000"},
            "SMARTCITY_INGEST_RECEIVE_MAXIMUM ([ingest] receive_maximum): must be between 1 and 65535",
        ),
        ({"SMARTCITY_INGEST_RECONNECT_MIN_DELAY_S": "60"}, "is above reconnect_max_delay_s (30)"),
        (
            {"SMARTCITY_INGEST_SPOOL_RETENTION_H": "24"},
            "SMARTCITY_INGEST_SPOOL_RETENTION_H ([ingest] spool_retention_h): 24 h is shorter than accept_max_age_h",
        ),
        ({"SMARTCITY_INGEST_ACCEPT_MAX_AGE_H": "0"}, "([ingest] accept_max_age_h): must be between 1 and"),
        (
            {"SMARTCITY_MQTT_URL": "http://broker:1883"},
            "SMARTCITY_MQTT_URL ([mqtt] url): scheme must be mqtt:// or mqtts://",
        ),
        ({"SMARTCITY_MQTT_URL": "mqtt://broker:99999"}, "SMARTCITY_MQTT_URL ([mqtt] url): not a URL"),
        ({"SMARTCITY_MQTT_CA_FILE": "/nonexistent/ca.pem"}, "SMARTCITY_MQTT_CA_FILE ([mqtt] ca_file): no such file"),
    ],
)
def test_bad_settings_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        IngestSettings.from_env(environ)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
