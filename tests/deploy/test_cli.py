"""Every command prints usage with --help; usage errors are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from deploy.cli import app


def all_command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    context = click.Context(group)
    for name in group.list_commands(context):  # the top level is lazy: list_commands names them all
        command = group.get_command(context, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            paths += all_command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", all_command_paths(app), ids=lambda p: " ".join(p) or "smartcity")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = run(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: smartcity")
    assert result.stderr == ""


@pytest.mark.parametrize("path", all_command_paths(app), ids=lambda p: " ".join(p) or "smartcity")
def test_unknown_option_is_one_line_and_exit_2(path: tuple[str, ...]) -> None:
    result = run(*path, "--no-such-option")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "No such option" in lines[0]


def test_ingest_loads_no_other_package_commands() -> None:
    """The long-lived `smartcity ingest` imports only what it runs: not the report, Grafana SDK or simulator."""
    code = (
        "import sys; from deploy.cli import app; app.get_command(__import__('click').Context(app), 'ingest'); "
        "print(' '.join(sorted(m for m in ('plotly', 'grafana_foundation_sdk', 'deploy.report', "
        "'deploy.report_queries', 'deploy.report_figures', 'sensors.simulator', 'sensors.publisher', "
        "'apache_beam', 'cryptography') if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
