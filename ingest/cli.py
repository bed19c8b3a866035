"""`smartcity ingest`: run the ingest service until SIGTERM or SIGINT."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ingest.settings import ROLES, IngestSettings
from sensors.cli import registry_from, registry_option
from sensors.contract import Contract
from sensors.shutdown import handled_signals


@click.command("ingest")
@click.option("--role", type=click.Choice(ROLES), help="Loops to run [env: SMARTCITY_INGEST_ROLE; default: all].")
@click.option(
    "--client-id",
    help="Stable MQTT client id; also the spool stream folder [env: SMARTCITY_INGEST_CLIENT_ID].",
)
@click.option(
    "--topics",
    help="Comma-separated topic filters, e.g. 'smartcity/v1/phuket/#' [env: SMARTCITY_INGEST_TOPICS].",
)
@click.option(
    "--share-group",
    help="Join $share/GROUP/... (brokers that restore shared subscriptions) [env: SMARTCITY_INGEST_SHARE_GROUP].",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="State folder; the spool is HOME/spool [env: SMARTCITY_HOME].",
)
@registry_option
@click.option("-q", "--quiet", is_flag=True, help="No status line every metrics interval.")
def ingest_command(
    role: str | None,
    client_id: str | None,
    topics: str | None,
    share_group: str | None,
    home: Path | None,
    registry_paths: Sequence[Path],
    quiet: bool,
) -> None:
    """Run the ingest service: MQTT -> validated, durable spool -> InfluxDB raw.

    Messages are acknowledged only once their readings (or their rejection) are
    fsync'd in the spool; rejections go to smartcity/dlq/v1/... . Runs until
    SIGTERM or SIGINT, then drains, acknowledges and exits 0. Settings: see
    ingest/sample.toml (smartcity.toml [ingest], SMARTCITY_INGEST_*).
    """
    overrides: dict[str, Any] = {"role": role, "client_id": client_id, "share_group": share_group, "home": home}
    if topics is not None:
        overrides["topics"] = tuple(t.strip() for t in topics.split(",") if t.strip())
    from ingest.service import IngestService, influx_sinks
    from ingest.writerproc import writer_command
    from storage.settings import duration_ns

    settings = IngestSettings.from_env(**overrides)
    influx, sink_factory, metrics_sink_factory = influx_sinks()
    # Readings are accepted for accept_max_age_h, and never beyond the raw retention (INF: 0 ns).
    retention_ms = duration_ns(influx.raw_retention) // 1_000_000 or 10**18
    max_age_ms = min(int(settings.accept_max_age_h * 3_600_000), retention_ms)
    # A writer decodes nothing: no registry to load.
    contract = Contract(registry_from(registry_paths), max_age_ms=max_age_ms) if settings.role != "write" else None

    console = Console(stderr=True)
    stop = threading.Event()
    service = IngestService(
        settings,
        contract,
        sink_factory=sink_factory,
        on_report=None if quiet else _status_printer(console, settings),
        metrics_sink_factory=metrics_sink_factory,
        # The raw writer of role all runs in a child process (ingest.writerproc): consumer and writer each get a core.
        writer_command=writer_command(settings.client_id, settings.home, quiet=quiet),
    )
    source = f"{settings.mqtt.display} {', '.join(settings.subscriptions)} -> " if settings.role != "write" else ""
    console.print(
        f"[dim]ingest {settings.client_id}: role {settings.role}, {source}{settings.stream_dir} -> {influx.url}[/]"
    )
    with handled_signals(lambda _: stop.set()):  # SIGINT and SIGTERM set `stop`: the service then drains in order
        service.run(stop)


def _status_printer(console: Console, settings: IngestSettings) -> Any:
    from rich.markup import escape

    from ingest.metrics import status_line

    def show(fields: dict[str, Any]) -> None:
        paused = " [yellow]paused: spool budget[/]" if fields.get("paused") else ""
        console.print(f"[dim]{escape(status_line(fields, settings.metrics_interval_s))}{paused}[/]")

    return show
