"""`compose init` makes alerts reach someone: the webhook URL is required, e-mail comes with its SMTP server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy.cli import main
from deploy.compose import ALERT_EMAIL, ALERT_WEBHOOK, ENV_FILE, read_env_file

HOOK = "https://hooks.example/smartcity"


def init(out: Path, *args: str) -> int:
    return main(["compose", "init", "--out", str(out), *args])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_init_without_a_webhook_url_stops_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALERT_WEBHOOK, raising=False)
    out = tmp_path / "compose"
    assert init(out) == 1
    assert "--alert-webhook-url" in one_line_error(capsys)
    assert not (out / ENV_FILE).exists()


@pytest.mark.parametrize("url", ["alerts.example/hook", "ftp://alerts.example/", "https://"])
def test_init_rejects_a_webhook_url_grafana_cannot_post_to(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path, "--alert-webhook-url", url) == 1
    assert "not an http(s) URL" in one_line_error(capsys)


def test_the_webhook_url_is_kept_and_email_needs_its_smtp_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALERT_WEBHOOK, raising=False)
    assert init(tmp_path, "--alert-webhook-url", HOOK) == 0
    assert init(tmp_path) == 0  # a re-run keeps it
    env = read_env_file(tmp_path / ENV_FILE)
    assert env[ALERT_WEBHOOK] == HOOK and ALERT_EMAIL not in env

    capsys.readouterr()
    assert init(tmp_path, "--alert-email", "ops@city.example") == 1
    assert "--smtp-host" in one_line_error(capsys)

    monkeypatch.setenv("SMARTCITY_SMTP_PASSWORD", "s3cret")
    args = ["--alert-email", "ops@city.example", "--smtp-host", "smtp.city.example:587", "--smtp-from", "grafana@city"]
    assert init(tmp_path, *args, "--smtp-user", "grafana") == 0
    env = read_env_file(tmp_path / ENV_FILE)
    assert env[ALERT_EMAIL] == "ops@city.example" and env["GF_SMTP_ENABLED"] == "true"
    assert env["GF_SMTP_HOST"] == "smtp.city.example:587" and env["GF_SMTP_PASSWORD"] == "s3cret"
    assert "dashboards build --alert-email" in capsys.readouterr().out


def test_compose_starts_grafana_only_with_a_webhook_url() -> None:
    """`${VAR:?message}` makes docker compose stop with the message when the variable is unset or empty."""
    compose = yaml.safe_load((Path(__file__).parents[2] / "deploy" / "compose.yaml").read_text())
    env = compose["services"]["grafana"]["environment"]
    assert env[ALERT_WEBHOOK].startswith("${" + ALERT_WEBHOOK + ":?") and "compose init" in env[ALERT_WEBHOOK]
    assert ".invalid" not in str(env)
