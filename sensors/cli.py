"""`smartcity sensors ...`: look at the registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from sensors.home import DEFAULT_HOME
from sensors.registry import Registry, default_registry, load_registry

registry_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--registry",
    "registry_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    envvar="SMARTCITY_REGISTRY",
    help="Registry file or folder (repeatable; default: the built-in registry) [env: SMARTCITY_REGISTRY].",
)


def home_option(what: str = "spool, secrets, local stack data") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--home`: the state folder every command shares (default ./.smartcity, env SMARTCITY_HOME)."""
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_HOME,
        show_default=True,
        envvar="SMARTCITY_HOME",
        help=f"State folder: {what} [env: SMARTCITY_HOME].",
    )


def registry_from(paths: Sequence[Path]) -> Registry:
    return load_registry(list(paths)) if paths else default_registry()


@click.group("sensors")
def sensors_group() -> None:
    """The sensor registry: places, kinds, vendors and the fleet."""


@sensors_group.command("list")
@registry_option
@click.option("--city", help="Only sensors in this city (e.g. phuket, chiang-mai).")
@click.option("--kind", help="Only sensors of this kind (e.g. air_quality).")
@click.option("--vendor", help="Only sensors of this vendor.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def list_sensors(
    registry_paths: Sequence[Path], city: str | None, kind: str | None, vendor: str | None, as_json: bool
) -> None:
    """List the sensors of the registry."""
    registry = registry_from(registry_paths)
    for value, known, what in (
        (city, registry.cities, "city"),
        (kind, registry.kinds, "kind"),
        (vendor, registry.vendors, "vendor"),
    ):
        if value is not None and value not in known:
            raise click.BadParameter(f"unknown {what} {value!r} (known: {', '.join(sorted(known))})", param_hint=what)
    sensors = registry.sensors_of(city=city, kind=kind, vendor=vendor)
    if as_json:
        click.echo(json.dumps([{**s.__dict__, "topic": s.topic} for s in sensors], ensure_ascii=False, indent=1))
        return
    columns = ("id", "kind", "vendor", "city", "district", "site")
    rows = [[getattr(s, c) for c in columns] for s in sensors]
    console = Console()
    if console.is_terminal:
        table = Table(*columns)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:  # plain tab-separated lines for scripts and pipes
        click.echo("\t".join(columns))
        for row in rows:
            click.echo("\t".join(row))
    click.echo(f"{len(sensors)} sensors", err=True)
