"""One settings mechanism: each package's sample.toml documents exactly its settings, with the code's
defaults, is copied in its docs, and every key it documents works in smartcity.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from deploy.config import read_file
from ingest.settings import IngestSettings
from pipelines.settings import PipelineSettings
from sensors.settings import sample_defaults
from storage.settings import InfluxSettings

ROOT = Path(__file__).resolve().parents[1]

# package -> (its section, its settings class and the fields that are not keys of that section, the doc that
# copies its sample.toml)
PACKAGES: dict[str, tuple[str, Any, set[str], str]] = {
    "ingest": ("ingest", IngestSettings, {"home", "mqtt"}, "ingest/README.md"),
    "storage": ("influx", InfluxSettings, {"username", "password"}, "storage/README.md"),
    "pipelines": ("pipeline", PipelineSettings, {"home"}, "docs/pipelines.md"),
    "dashboards": ("grafana", None, set(), "docs/dashboards.md"),
}


def documented(value: Any) -> Any:
    """A setting's default as sample.toml writes it."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Path):
        return str(value)
    return value


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else str(value)


@pytest.mark.parametrize("package", PACKAGES)
def test_sample_lists_every_setting_with_the_code_default(package: str) -> None:
    section, settings_class, not_keys, _ = PACKAGES[package]
    defaults = sample_defaults(ROOT / package / "sample.toml")[section]
    if settings_class is None:
        assert set(defaults) == {"url", "token"}
        return
    assert set(defaults) == {f.name for f in fields(settings_class)} - not_keys
    code = settings_class()
    for name, value in defaults.items():
        expected = "auto" if name == "gzip" and getattr(code, name) is None else documented(getattr(code, name))
        assert value == expected, f"[{section}] {name}: sample.toml says {value!r}, the code {expected!r}"


@pytest.mark.parametrize("package", PACKAGES)
def test_docs_copy_the_sample_verbatim(package: str) -> None:
    sample = (ROOT / package / "sample.toml").read_text()
    assert f"```toml\n{sample}```\n" in (ROOT / PACKAGES[package][3]).read_text()


def test_every_documented_key_works_in_smartcity_toml(tmp_path: Path) -> None:
    """The file a user writes from the samples loads: e.g. `[influx] raw_retention`, refused before."""
    import deploy.cli  # noqa: F401 - registers every package's keys

    top, sections = [], []
    for package in PACKAGES:
        for section, values in sample_defaults(ROOT / package / "sample.toml").items():
            lines = [f"{key} = {toml_value(value)}" for key, value in values.items()]
            if section:
                sections += [f"[{section}]", *lines]
            else:
                top += lines  # TOML: top-level keys before the first section
    config = tmp_path / "smartcity.toml"
    config.write_text("\n".join(top + sections) + "\n")
    values = read_file(config)
    assert values["SMARTCITY_INFLUX_RAW_RETENTION"] == "30d"
    assert values["SMARTCITY_PIPELINE_POLL_INTERVAL_S"] == str(PipelineSettings.poll_interval_s)
    assert "SMARTCITY_GRAFANA_URL" in values and "SMARTCITY_INGEST_CLIENT_ID" in values


def test_old_grafana_variables_still_work_with_a_warning() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "SMARTCITY_GRAFANA_"))}
    env |= {"GRAFANA_URL": "http://127.0.0.1:9", "GRAFANA_TOKEN": "t", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "dashboards", "push"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "GRAFANA_URL is deprecated; set SMARTCITY_GRAFANA_URL" in done.stderr
    assert "GRAFANA_TOKEN is deprecated; set SMARTCITY_GRAFANA_TOKEN" in done.stderr
    assert done.returncode == 1 and "127.0.0.1:9" in done.stderr  # it did use the old URL
    env |= {"SMARTCITY_GRAFANA_URL": "http://127.0.0.1:9", "SMARTCITY_GRAFANA_TOKEN": "t"}
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "dashboards", "push"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "deprecated" not in done.stderr and done.returncode == 1
