"""deploy/compose.yaml is a valid deployment of what `compose init` and `dashboards build` produce.

No Docker engine runs here, so this is the `docker compose config` equivalent: the YAML is
well formed, every service has an image or a build, the servers have health checks, every
variable it interpolates is defined by the generated env file, every bind mount points at a
file or folder that exists, and every smartcity command line parses with the real CLI.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from deploy.cli import app
from deploy.compose import ENV_FILE, AlertDelivery, init_compose, read_env_file
from deploy.tls import certificate_names
from tests.deploy.composefile import COMPOSE, substitute


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compose")
    init_compose(out, alerts=AlertDelivery(webhook_url="https://hooks.example/smartcity"))
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_init_writes_private_secrets_and_broker_files(generated: Path) -> None:
    env = read_env_file(generated / ENV_FILE)
    assert stat.S_IMODE((generated / ENV_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((generated / "mqtt-users.json").stat().st_mode) == 0o600
    for key in (
        "SMARTCITY_INFLUX_ADMIN_PASSWORD",
        "SMARTCITY_INFLUX_INGEST_PASSWORD",
        "SMARTCITY_MQTT_INGEST_PASSWORD",
        "SMARTCITY_GRAFANA_ADMIN_PASSWORD",
        "SMARTCITY_GRAFANA_SECRET_KEY",
    ):
        assert len(env[key]) >= 20
    assert env["SMARTCITY_PUBLISH_ADDRESS"] == "127.0.0.1"
    for private in (generated / "ca.key", generated / "mosquitto" / "tls" / "server.key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    ca = (generated / "mosquitto" / "tls" / "ca.crt").read_bytes()
    assert "mosquitto" in certificate_names(generated / "mosquitto" / "tls" / "server.crt")
    conf = (generated / "mosquitto" / "mosquitto.conf").read_text()
    assert "persistence true" in conf and "allow_anonymous false" in conf and "listener 1883\n" in conf
    assert "listener 8883\ncafile /mosquitto/config/tls/ca.crt\n" in conf
    acl = (generated / "mosquitto" / "acl").read_text()
    assert "user siam-airsense\n" in acl and "topic write smartcity/v1/phuket/air_quality/pkt-aq-001\n" in acl
    # A second run keeps every password and the CA vendors verify the broker with.
    init_compose(generated)
    assert read_env_file(generated / ENV_FILE) == env
    assert (generated / "mosquitto" / "tls" / "ca.crt").read_bytes() == ca


def test_services_images_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mosquitto", "influxdb", "grafana", "ingest-a", "ingest-b", "pipeline"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
    for name in ("mosquitto", "influxdb", "grafana"):
        assert services[name]["healthcheck"]["test"], name
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/", "$")):
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"


def test_every_variable_and_bind_mount_resolves(compose: dict[str, Any], generated: Path) -> None:
    env = read_env_file(generated / ENV_FILE)
    text = substitute(COMPOSE.read_text(), env)
    resolved = yaml.safe_load(text)
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                path = (COMPOSE.parent / source).resolve()
                assert path.exists(), f"{name}: bind mount {source} does not exist"


def test_smartcity_commands_parse(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("image") != "smartcity:latest":
            continue
        args = list(service["command"])
        try:
            ctx = app.make_context("smartcity", args, resilient_parsing=False)
            with ctx:
                command_name, command, rest = app.resolve_command(ctx, args)
                assert command is not None
                while isinstance(command, click.Group):
                    sub = command.make_context(command_name or "", rest, parent=ctx)
                    command_name, command, rest = command.resolve_command(sub, rest)
                    assert command is not None
                command.make_context(command_name or "", rest)
        except click.UsageError as err:
            raise AssertionError(f"{name}: smartcity {' '.join(args)}: {err.format_message()}") from err


def test_init_options_are_checked_and_kept(tmp_path: Path) -> None:
    from click.testing import CliRunner

    runner = CliRunner()
    bad = runner.invoke(app, ["compose", "init", "--out", str(tmp_path), "--publish-address", "everywhere"])
    assert bad.exit_code == 2 and "'everywhere' is not an IP address" in bad.output
    args = [
        "compose",
        "init",
        "--out",
        str(tmp_path),
        "--publish-address",
        "0.0.0.0",
        "--mqtt-host",
        "mqtt.city.example",
        "--alert-webhook-url",
        "https://hooks.example/smartcity",
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["compose", "init", "--out", str(tmp_path)]).exit_code == 0
    assert read_env_file(tmp_path / ENV_FILE)["SMARTCITY_PUBLISH_ADDRESS"] == "0.0.0.0", "a re-run keeps the opt-out"
