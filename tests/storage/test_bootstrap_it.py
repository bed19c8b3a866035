"""Bootstrap creates the database and retention policies, is idempotent, and follows changed durations."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from storage.bootstrap import bootstrap, go_duration_ns, v2_commands
from storage.query import QueryClient, ident
from storage.settings import InfluxSettings
from tests.servers import StackHandle
from tests.storage.conftest import admin_settings

pytestmark = pytest.mark.integration


def policies(settings: InfluxSettings) -> dict[str, tuple[str, str, bool]]:
    with QueryClient(settings) as client:
        [series] = client.query("SHOW RETENTION POLICIES ON {db}", {"db": ident(settings.db)}, db="")
    return {r["name"]: (r["duration"], r["shardGroupDuration"], r["default"]) for r in series.records()}


def test_bootstrap_is_idempotent_and_alters_changed_durations(stack: StackHandle) -> None:
    settings = admin_settings(stack, f"boot_{os.getpid()}")
    first = bootstrap(settings)
    assert first.actions == [
        f"created database {settings.db}",
        "created retention policy raw (30d, default)",
        "created retention policy rollup (730d)",
    ]
    assert policies(settings)["raw"] == ("720h0m0s", "24h0m0s", True)
    assert policies(settings)["rollup"] == ("17520h0m0s", "168h0m0s", False)

    assert bootstrap(settings).actions == []

    changed = dataclasses.replace(settings, raw_retention="7d", rollup_retention="104w")
    steps: list[str] = []
    assert (
        bootstrap(changed, on_step=steps.append).actions
        == steps
        == [
            "changed retention policy raw to 7d, default",
            "changed retention policy rollup to 104w",
        ]
    )
    assert policies(settings)["raw"] == ("168h0m0s", "24h0m0s", True)
    assert policies(settings)["rollup"] == ("17472h0m0s", "168h0m0s", False)
    assert bootstrap(changed).actions == []

    # Someone made another RP the default: bootstrap takes it back.
    with QueryClient(settings) as client:
        client.execute(
            "ALTER RETENTION POLICY {rp} ON {db} DEFAULT", {"rp": ident("autogen"), "db": ident(settings.db)}
        )
    assert bootstrap(changed).actions == ["changed retention policy raw to 7d, default"]


def test_bootstrap_on_v2_only_prints_the_influx_cli_commands() -> None:
    settings = InfluxSettings(url="https://influx.example:8086", token="t", org="city ops")
    steps: list[str] = []
    report = bootstrap(settings, on_step=steps.append)
    assert report.actions == [] and report.commands == v2_commands(settings)
    assert report.commands[0] == "influx bucket create --org 'city ops' --name smartcity/raw --retention 30d"
    assert "influx v1 dbrp create --org 'city ops' --db smartcity --rp raw --default --bucket-id" in report.commands[2]
    assert steps[1:] == ["  " + command for command in report.commands]


def test_go_durations() -> None:
    assert go_duration_ns("720h0m0s") == 30 * 86_400 * 10**9
    assert go_duration_ns("1h30m0s") == 5_400 * 10**9
    assert go_duration_ns("0s") == 0


def test_stack_up_leaves_a_ready_database(tmp_path: Path) -> None:
    """`smartcity stack up` bootstraps; `stack status` runs the write-and-read self-test."""
    from deploy.servers import free_port

    home = tmp_path / "home"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    smartcity = shutil.which("smartcity", path=env["PATH"]) or "smartcity"
    ports = ["--mqtt-port", str(free_port()), "--influx-port", str(free_port())]
    up = subprocess.run(
        [smartcity, "stack", "up", "--home", str(home), *ports], env=env, capture_output=True, text=True, timeout=120
    )
    try:
        assert up.returncode == 0, up.stderr
        assert "created retention policy raw" in up.stdout + up.stderr
        status = subprocess.run(
            [smartcity, "stack", "status", "--home", str(home)], env=env, capture_output=True, text=True, timeout=60
        )
        assert "write+read self-test" in status.stdout, status.stdout + status.stderr
    finally:
        subprocess.run([smartcity, "stack", "down", "--home", str(home)], env=env, capture_output=True, timeout=60)
