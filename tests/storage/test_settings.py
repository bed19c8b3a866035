"""Settings from SMARTCITY_INFLUX_* with errors that name the variable; secrets stay out of repr."""

from __future__ import annotations

import re

import pytest

from storage.settings import InfluxSettings, InfluxSettingsError


def test_from_env_reads_url_credentials_and_defaults() -> None:
    settings = InfluxSettings.from_env({"SMARTCITY_INFLUX_URL": "http://admin:p%40ss:w@127.0.0.1:8086"})
    assert (settings.url, settings.username, settings.password) == ("http://127.0.0.1:8086", "admin", "p@ss:w")
    assert (settings.db, settings.raw_rp, settings.rollup_rp, settings.api) == ("smartcity", "raw", "rollup", "v1")
    assert (settings.raw_retention, settings.rollup_retention) == ("30d", "730d")
    assert "p@ss" not in repr(settings)


def test_token_and_org_select_v2() -> None:
    settings = InfluxSettings.from_env(
        {
            "SMARTCITY_INFLUX_URL": "https://influx.example",
            "SMARTCITY_INFLUX_TOKEN": "tok",
            "SMARTCITY_INFLUX_ORG": "city",
            "SMARTCITY_INFLUX_DB": "pilot",
        }
    )
    assert settings.api == "v2" and settings.bucket(settings.raw_rp) == "pilot/raw"
    assert "tok" not in repr(settings)


def test_every_field_can_be_set_from_the_environment() -> None:
    settings = InfluxSettings.from_env(
        {
            "SMARTCITY_INFLUX_BATCH_SIZE": "100",
            "SMARTCITY_INFLUX_TIMEOUT_S": "0.5",
            "SMARTCITY_INFLUX_GZIP": "false",
            "SMARTCITY_INFLUX_RAW_RETENTION": "14d",
            "SMARTCITY_INFLUX_ROLLUP_RETENTION": "INF",
            "SMARTCITY_INFLUX_MAX_RETRIES": "0",
        }
    )
    assert (settings.batch_size, settings.timeout_s, settings.gzip) == (100, 0.5, False)
    assert (settings.raw_retention, settings.rollup_retention, settings.max_retries) == ("14d", "INF", 0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SMARTCITY_INFLUX_URL": "influx:8086"}, "SMARTCITY_INFLUX_URL ([influx] url): must be http(s)://"),
        ({"SMARTCITY_INFLUX_URL": "http://h:99999"}, "SMARTCITY_INFLUX_URL ([influx] url): "),
        ({"SMARTCITY_INFLUX_TOKEN": "t"}, "SMARTCITY_INFLUX_ORG ([influx] org): is required"),
        ({"SMARTCITY_INFLUX_ORG": "o"}, "SMARTCITY_INFLUX_TOKEN ([influx] token): is required"),
        (
            {"SMARTCITY_INFLUX_URL": "http://u:p@h", "SMARTCITY_INFLUX_TOKEN": "t", "SMARTCITY_INFLUX_ORG": "o"},
            "not both",
        ),
        ({"SMARTCITY_INFLUX_BATCH_SIZE": "0"}, "SMARTCITY_INFLUX_BATCH_SIZE ([influx] batch_size): must be between 1"),
        (
            {"SMARTCITY_INFLUX_BATCH_SIZE": "many"},
            "([influx] batch_size): must be an integer",
        ),
        ({"SMARTCITY_INFLUX_GZIP": "maybe"}, "SMARTCITY_INFLUX_GZIP ([influx] gzip): must be true or false (or auto)"),
        ({"SMARTCITY_INFLUX_RAW_RETENTION": "30 days"}, "SMARTCITY_INFLUX_RAW_RETENTION ([influx] raw_retention):"),
        ({"SMARTCITY_INFLUX_RAW_RETENTION": "30m"}, "at least 1h"),
        ({"SMARTCITY_INFLUX_DB": "a b"}, "SMARTCITY_INFLUX_DB ([influx] db):"),
        ({"SMARTCITY_INFLUX_ROLLUP_RP": "raw"}, "SMARTCITY_INFLUX_ROLLUP_RP ([influx] rollup_rp): must differ"),
        ({"SMARTCITY_INFLUX_RETRY_JITTER": "2"}, "SMARTCITY_INFLUX_RETRY_JITTER ([influx] retry_jitter):"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(InfluxSettingsError, match=re.escape(message)):
        InfluxSettings.from_env(env)


def test_gzip_is_auto_by_default_off_on_loopback_only() -> None:
    assert not InfluxSettings(url="http://127.0.0.1:8086").use_gzip
    assert not InfluxSettings(url="http://localhost:8086").use_gzip
    assert InfluxSettings(url="https://influx.example").use_gzip
    assert InfluxSettings.from_env({"SMARTCITY_INFLUX_GZIP": "true"}).use_gzip
    assert InfluxSettings.from_env(
        {"SMARTCITY_INFLUX_GZIP": "auto", "SMARTCITY_INFLUX_URL": "http://10.0.0.5:8086"}
    ).use_gzip
