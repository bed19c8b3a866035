"""The `smartcity` command line.

Every subcommand prints `--help`; bad input ends with one line on stderr and a
non-zero exit (2 for usage errors, 1 for anything else the user can fix),
never a traceback. Subcommand groups live next to the code they drive and are
mounted here.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from deploy import config
from ingest.settings import CONFIG_KEYS as INGEST_CONFIG_KEYS
from pipelines.settings import CONFIG_KEYS as PIPELINE_CONFIG_KEYS
from sensors.cli import home_option, registry_from, registry_option
from sensors.errors import SmartcityError
from sensors.settings import sample_keys
from storage.settings import CONFIG_KEYS as STORAGE_CONFIG_KEYS

# Wider than rich's 80 columns when writing to a file or a pipe, so tables stay readable in logs.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
out = Console(width=None if sys.stdout.isatty() else 120)


def step(message: str) -> None:
    console.print(f"[dim]{message}[/]")


class LazyGroup(click.Group):
    """A group whose subcommands are imported when one runs (or `--help` lists them), so that a long-lived
    `smartcity ingest` does not carry the report's plotly, the Grafana SDK or the simulator's numpy."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, _, attribute = self.lazy[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


# Every package's subcommands, mounted here and imported only when used.
SUBCOMMANDS = {
    "sensors": "deploy.acl:sensors_group",  # with `acl` mounted
    "contract": "sensors.contract_cli:contract_group",
    "ingest": "ingest.cli:ingest_command",
    "dashboards": "dashboards.cli:dashboards_group",
    "pipeline": "pipelines.cli:pipeline_group",
    "simulate": "sensors.simulate_cli:simulate_command",
    "report": "deploy.report:report_command",
    "compose": "deploy.compose:compose_group",
    "audit": "deploy.audit:audit_command",
}


@click.group(
    cls=LazyGroup,
    lazy=SUBCOMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file [default: $SMARTCITY_CONFIG or ./smartcity.toml]; environment variables override it.",
)
def app(verbose: int, config_path: Path | None) -> None:
    """City sensor data platform: MQTT ingest, Beam pipelines, InfluxDB, Grafana."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from deploy.config import apply_config

    apply_config(config_path)


@app.group("config")
def config_group() -> None:
    """The effective configuration (smartcity.toml + SMARTCITY_* environment)."""


@config_group.command("show")
def config_show() -> None:
    """Print every setting with its value (secrets masked) and whether it is set or a default."""
    from deploy.config import effective

    for key, value, source in effective():
        click.echo(f"{key.env}={value}\t# {source}; smartcity.toml: {key.toml}; {key.help}")


DASHBOARD_CONFIG_KEYS = sample_keys(Path(__file__).parent.parent / "dashboards" / "sample.toml")
for package_keys in (STORAGE_CONFIG_KEYS, INGEST_CONFIG_KEYS, PIPELINE_CONFIG_KEYS, DASHBOARD_CONFIG_KEYS):
    config.register(config.Key(*key) for key in package_keys)


@app.group("stack")
def stack_group() -> None:
    """Run a local Mosquitto + InfluxDB (Debian binaries, no Docker)."""


@stack_group.command("up")
@home_option()
@click.option(
    "--mqtt-port", type=click.IntRange(1, 65535), default=1883, show_default=True, help="Plain MQTT port (127.0.0.1)."
)
@click.option(
    "--mqtt-tls-port",
    type=click.IntRange(1, 65535),
    default=8883,
    show_default=True,
    help="MQTT over TLS port, on every interface (vendors).",
)
@click.option(
    "--tls-name",
    "tls_names",
    multiple=True,
    help="Another host name or IP address vendors reach the broker by (repeatable); "
    "the certificate always names this machine and localhost.",
)
@click.option("--influx-port", type=click.IntRange(1, 65535), default=8086, show_default=True, help="InfluxDB port.")
@registry_option
def stack_up(
    home: Path,
    mqtt_port: int,
    mqtt_tls_port: int,
    tls_names: tuple[str, ...],
    influx_port: int,
    registry_paths: Sequence[Path],
) -> None:
    """Start Mosquitto and InfluxDB with generated configs and credentials (one per vendor); write HOME/env.

    Plain MQTT listens on 127.0.0.1 only; vendors connect with TLS, verifying the broker
    with HOME/tls/ca.crt (created on the first run and kept).
    """
    from deploy.stack import Stack

    stack = Stack(home)
    registry = registry_from(registry_paths)
    ports = stack.up(
        mqtt_port=mqtt_port,
        influx_port=influx_port,
        mqtt_tls_port=mqtt_tls_port,
        tls_names=tls_names,
        on_step=step,
        registry=registry,
    )
    out.print(
        f"stack up: mqtt 127.0.0.1:{ports.mqtt}, mqtts :{ports.mqtt_tls} (CA {stack.tls_files.ca_cert}), "
        f"influxdb 127.0.0.1:{ports.influx}"
    )
    out.print(f"load its settings with: . {stack.env_path}")


@stack_group.command("down")
@home_option()
def stack_down(home: Path) -> None:
    """Stop the servers 'stack up' started (data is kept)."""
    from deploy.stack import Stack

    stopped = Stack(home).down(on_step=step)
    out.print("stack down: " + (", ".join(stopped) + " stopped" if stopped else "nothing was running"))


@stack_group.command("status")
@home_option()
def stack_status(home: Path) -> None:
    """Show each service's pid, port and health; exit 1 if any is down."""
    from deploy.stack import Stack

    statuses = Stack(home).status()
    if not statuses:
        raise SmartcityError(f"no stack in {home.resolve()}: run 'smartcity stack up' first")
    table = Table("service", "pid", "port", "health", "detail")
    for s in statuses:
        table.add_row(s.name, str(s.pid or "-"), str(s.port), "[green]ok[/]" if s.healthy else "[red]down[/]", s.detail)
    out.print(table)
    if not all(s.healthy for s in statuses):
        raise SystemExit(1)


@app.command("demo")
@home_option()
@click.option(
    "--minutes",
    type=click.FloatRange(0.1, 600),
    default=1.0,
    show_default=True,
    help="Minutes of live publishing after the replay.",
)
@click.option(
    "--hours", type=click.IntRange(1, 24 * 29), default=24, show_default=True, help="Hours of history to replay fast."
)
@click.option(
    "--sensors",
    type=click.IntRange(0),
    default=0,
    show_default="0: the whole fleet",
    help="Publish for this many sensors (a deterministic subset of the fleet).",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the simulated readings.")
@click.option("--mqtt-port", type=click.IntRange(1, 65535), default=1883, show_default=True, help="MQTT port.")
@click.option("--influx-port", type=click.IntRange(1, 65535), default=8086, show_default=True, help="InfluxDB port.")
@click.option(
    "--mqtt-tls-port", type=click.IntRange(1, 65535), default=8883, show_default=True, help="MQTT over TLS port."
)
@registry_option
def demo(
    home: Path,
    minutes: float,
    hours: int,
    sensors: int,
    seed: int,
    mqtt_port: int,
    influx_port: int,
    mqtt_tls_port: int,
    registry_paths: Sequence[Path],
) -> None:
    """Run the whole system end to end on this machine and print a summary.

    Stack up, two ingest processes, a fast replay of the last HOURS with faults, the Beam
    pipelines (backfill, then following live readings), dashboards build + check, audit and
    the HTML report. Exit 1 if the audit does not balance, or if the production audit (no
    manifests) finds an accepted reading missing or a seq gap that the simulator's `drop` fault
    does not account for. Ctrl-C stops what the demo started.
    """
    from deploy.demo import Demo, DemoOptions, print_summary

    options = DemoOptions(
        home=home,
        minutes=minutes,
        hours=hours,
        sensors=sensors,
        seed=seed,
        mqtt_port=mqtt_port,
        influx_port=influx_port,
        mqtt_tls_port=mqtt_tls_port,
        registry_paths=tuple(registry_paths),
    )
    registry = registry_from(registry_paths)
    result = Demo(options, registry, console).run()
    print_summary(result, registry, out)
    out.print(f"the stack keeps running ('smartcity stack down --home {home}' stops it)")
    if result.audit is None or not result.audit.balanced:
        raise SmartcityError("the audit does not balance: see the table above")
    if not all(p.balanced for p in result.production):
        raise SmartcityError(
            "the production audit found readings lost (accepted and missing, or seq gaps beyond the simulator's "
            "intended drops): see the tables above"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: one-line errors, exit 2 on usage errors, 1 on user errors."""
    try:
        result = app.main(args=argv, prog_name="smartcity", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.ctx.get_help() if err.ctx else "", err=True)
        return 2
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else "smartcity"
        print(f"{where}: {err.format_message()} (see '{where} --help')", file=sys.stderr)
        return 2
    except click.ClickException as err:
        print(f"smartcity: error: {err.format_message()}", file=sys.stderr)
        return err.exit_code
    except (click.Abort, KeyboardInterrupt):
        print("smartcity: interrupted", file=sys.stderr)
        return 130
    except SmartcityError as err:
        print(f"smartcity: error: {err}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
