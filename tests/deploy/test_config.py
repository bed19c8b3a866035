"""smartcity.toml: keys map to SMARTCITY_* variables, the environment wins, unknown keys are named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy.config import ConfigError, apply_config, mask, read_file


def test_file_values_become_variables_and_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "smartcity.toml"
    config.write_text('home = "/srv/smartcity"\n[influx]\ndb = "city"\nurl = "http://a:b@h:1"\n')
    environ = {"SMARTCITY_INFLUX_DB": "from-env"}
    assert apply_config(config, environ) == config
    assert environ == {
        "SMARTCITY_HOME": "/srv/smartcity",
        "SMARTCITY_INFLUX_DB": "from-env",
        "SMARTCITY_INFLUX_URL": "http://a:b@h:1",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[influx]\nulr = 'x'\n", "[influx] ulr: unknown key"),
        ("[database]\nurl = 'x'\n", "unknown section [database]"),
        ("homee = 'x'\n", "homee: unknown key"),
        ("[influx\n", "invalid TOML"),
        ("[influx]\nurl = ['a', 'b']\n", "[influx] url: expected a single value"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "smartcity.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_file(config)
    assert message in str(err.value)
    assert str(err.value).startswith(str(config))


def test_secrets_are_masked() -> None:
    assert mask("SMARTCITY_INFLUX_URL", "http://admin:s3cret@127.0.0.1:8086") == "http://admin:****@127.0.0.1:8086"
    assert mask("SMARTCITY_INFLUX_TOKEN", "abc") == "****"
    assert mask("SMARTCITY_INFLUX_DB", "smartcity") == "smartcity"


def test_config_show_masks_and_cli_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[mqtt]\nurl = "mqtt://ingest:hunter2@broker:1883"\n')
    shown = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "--config", str(good), "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "SMARTCITY_MQTT_URL=mqtt://ingest:****@broker:1883\t# file" in shown.stdout
    assert "hunter2" not in shown.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "--config", str(bad), "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"smartcity: error: {bad}: [mqtt] port: unknown key (see 'smartcity config show' for the known keys)"
    ]
