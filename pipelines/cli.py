"""`smartcity pipeline ...`: run the Beam pipelines over a time range, or follow the spool.

Options after the command's own are Beam's (`--runner=...`, `--direct_num_workers=2`, ...).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines import load_run
from pipelines.settings import CATALOG, PIPELINES, PipelineSettings, PipelineSpec
from sensors.cli import registry_from, registry_option
from sensors.registry import Registry
from sensors.shutdown import handled_signals
from sensors.timeparse import time_option
from storage.settings import InfluxSettings

if TYPE_CHECKING:  # Beam takes a second to import: only the commands that run a pipeline load it
    from pipelines.run import RunReport

console = Console(stderr=True, soft_wrap=True)

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}
_BEAM_HELP = "Options after these go to Beam, e.g. --runner=PortableRunner --job_endpoint=HOST:PORT."


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
_COMMON: list[_Decorator] = [
    time_option("--from", "start", unit="ms", help="Start (widened to its hour) [default: spool start]."),
    time_option("--to", "end", unit="ms", help="End, exclusive (widened to the hour) [default: spool end]."),
    registry_option,
    click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="SMARTCITY_HOME",
        help="State folder [env: SMARTCITY_HOME; default .smartcity].",
    ),
    click.option(
        "--spool",
        type=click.Path(file_okay=False, path_type=Path),
        help="Spool folder [default: SMARTCITY_PIPELINE_SPOOL_DIR, else HOME/spool].",
    ),
    click.option("--no-cache", is_flag=True, help="Do not keep Parquet copies of the segments read."),
    click.option(
        "--allowed-lateness",
        type=click.IntRange(0, 366 * 86400),
        metavar="SECONDS",
        help="How late a reading may still update its windows [default 86400].",
    ),
]


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_COMMON):
        command = option(command)
    return command


def _settings(
    home: Path | None, spool: Path | None, no_cache: bool, lateness: int | None, poll: float | None = None
) -> PipelineSettings:
    return PipelineSettings.from_env(
        home=home,
        spool_dir=spool,
        column_cache=False if no_cache else None,
        allowed_lateness_s=lateness,
        poll_interval_s=poll,
    )


@click.group("pipeline")
def pipeline_group() -> None:
    """Beam pipelines: rollups, Thai AQI, sensor health and anomalies, from the spool into InfluxDB."""


def _beam() -> Any:
    """Import the pipelines' Beam side (quietly, see `load_run`)."""
    run = load_run()
    # Beam logs a failing step's exception with its traceback; the command prints it as one line.
    # Its own logs show from -vv (debug) on.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    return run


def _check_beam_args(args: Sequence[str]) -> None:
    """Arguments that neither the command nor Beam knows are usage errors (exit 2), as for any command."""
    from pipelines.options import unknown_args

    unknown = unknown_args(args)
    if unknown and unknown[0].startswith("-"):
        raise click.NoSuchOption(unknown[0], message=f"No such option: {unknown[0]} (nor a Beam option)")
    if unknown:
        raise click.UsageError(f"unexpected argument {unknown[0]!r}")


def _bounded(
    pipelines: Sequence[str],
    start: int | None,
    end: int | None,
    registry: Registry,
    settings: PipelineSettings,
    beam_args: Sequence[str],
) -> None:
    run = _beam()
    _check_beam_args(beam_args)
    run.beam_options(beam_args)  # refuse unsafe Beam options before touching anything
    if start is None or end is None:
        extent = run.spool_extent(settings)
        if extent is None:
            raise run.PipelineRunError(f"no closed spool segments in {settings.spool_root}; give --from and --to")
        start = extent[0] if start is None else start
        end = extent[1] + 1 if end is None else end
    plan = run.Plan.bounded(pipelines, start, end)
    influx = _influx()
    parts = run.slices(plan)
    total = run.RunReport(plan, 0.0)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(
            f"{'+'.join(plan.pipelines)} {_iso(plan.start_ms)}..{_iso(plan.end_ms)}", total=len(parts)
        )
        for part in parts:  # a day at a time: a local runner keeps a run's data in memory
            report = run.run_plan(part, settings, registry, beam_args, influx)
            total.seconds += report.seconds
            for name, value in report.counters.items():
                # Each slice lists the spool again: a segment with unreadable metadata is skipped by each.
                merge = max if name == "bad_metadata" else int.__add__
                total.counters[name] = merge(total.counters.get(name, 0), value)
            progress.advance(task)
    _print(total)


def _influx() -> InfluxSettings:
    from storage.bootstrap import bootstrap
    from storage.errors import StorageError

    influx = InfluxSettings.from_env()
    try:
        bootstrap(influx)  # the rollup retention policy must exist before the first write
    except StorageError as err:  # e.g. a user without admin rights: the database may well exist already
        console.print(f"[yellow]warning:[/] could not check the database and retention policies: {err}")
    return influx


# What a run skipped, by counter: reported after every run.
_SKIPPED = {
    "corrupt_lines": "spool lines that do not verify skipped",
    "lost_readings": "readings lost in cut or damaged spool segments",
    "bad_metadata": "spool segments skipped for unreadable metadata",
    "unknown_kind": "readings of kinds the registry does not know skipped",
    "dead_letters": "points InfluxDB refused",
}


def _print(report: RunReport) -> None:
    plan, c = report.plan, report.counters
    rate = report.readings / report.seconds if report.seconds else 0.0
    click.echo(
        f"{'+'.join(plan.pipelines)} {_iso(plan.start_ms)}..{_iso(plan.end_ms)}: "
        f"{report.readings:,} readings from {c.get('segments', 0):,} segments "
        f"({c.get('segments_from_cache', 0):,} from Parquet) -> {report.points_written:,} points "
        f"in {report.seconds:.1f} s ({rate:,.0f} readings/s)"
    )
    for name, what in _SKIPPED.items():
        if c.get(name):
            console.print(f"[yellow]warning:[/] {c[name]:,} {what} (the log names them)")


def _command(spec: PipelineSpec) -> click.Command:
    @pipeline_group.command(spec.name, context_settings=_PASS_THROUGH, epilog=_BEAM_HELP)
    @_common
    @click.pass_context
    def command(
        ctx: click.Context,
        start: int | None,
        end: int | None,
        registry_paths: Sequence[Path],
        home: Path | None,
        spool: Path | None,
        no_cache: bool,
        allowed_lateness: int | None,
    ) -> None:
        settings = _settings(home, spool, no_cache, allowed_lateness)
        _bounded([spec.name], start, end, registry_from(registry_paths), settings, ctx.args)

    command.help = spec.help + " Idempotent: re-running a range rewrites the same points."
    return command


for _spec in CATALOG:
    _command(_spec)


@pipeline_group.command("run", context_settings=_PASS_THROUGH, epilog=_BEAM_HELP)
@_common
@click.option("--follow", "follow_mode", is_flag=True, help="Keep going: process segments as they close.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.1, 86400),
    metavar="SECONDS",
    help="With --follow: seconds between looks at the spool [default 10].",
)
@click.pass_context
def run_all(
    ctx: click.Context,
    start: int | None,
    end: int | None,
    registry_paths: Sequence[Path],
    home: Path | None,
    spool: Path | None,
    no_cache: bool,
    allowed_lateness: int | None,
    follow_mode: bool,
    poll_interval: float | None,
) -> None:
    """Run every pipeline over a range, or with --follow continuously as ingest closes segments."""
    settings = _settings(home, spool, no_cache, allowed_lateness, poll_interval)
    registry = registry_from(registry_paths)
    if not follow_mode:
        _bounded(PIPELINES, start, end, registry, settings, ctx.args)
        return
    if start is not None or end is not None:
        raise click.UsageError("--follow takes no --from/--to: it continues from its checkpoint")
    run = _beam()
    _check_beam_args(ctx.args)
    run.beam_options(ctx.args)
    stop = threading.Event()
    influx = _influx()
    console.print(f"following {settings.spool_root} (checkpoint {settings.checkpoint_path}); Ctrl-C stops")

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            stop.set()
            console.print("stopping after the cycle in progress (Ctrl-C again stops now)")
            return
        # A cycle can wait minutes on a hung or down InfluxDB (timeouts times retries). Stopping now is
        # safe: nothing of the cycle is checkpointed, so the next run redoes it (the kill -9 tests).
        console.print("stopped without finishing the cycle; the next run redoes it from the checkpoint")
        sys.stderr.flush()
        os._exit(128 + signum)

    with handled_signals(on_signal):
        run.follow(settings, registry, ctx.args, influx, stop=stop, on_report=_print)
    console.print("stopped")
