"""`smartcity simulate`: publish the registry's fleet over MQTT, live or as a fast replay.

EXAMPLES

    . .smartcity/env                                   # broker URL and home of 'smartcity stack up'
    smartcity simulate --duration 60                   # every sensor at its interval_s, for a minute
    smartcity simulate --rate 500 --duration 60 --faults default
    smartcity simulate --from 2026-03-01 --to 2026-03-02 --speed max --sensors 100
    smartcity simulate --from now-24h --processes 2 --faults default   # two publishers, one manifest
    smartcity simulate --from now-6h --speed 60x --faults malformed_json=0.01,duplicate=0.02
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sensors.broker_url import BrokerAddress
from sensors.cli import home_option, registry_from, registry_option
from sensors.contract import DEFAULT_MAX_AGE_MS, MAX_FUTURE_MS, format_window
from sensors.faults import FaultSpecError, format_faults, parse_faults
from sensors.home import Home
from sensors.publisher import Progress as RunProgress
from sensors.publisher import Publisher, Tally, iso, load_passwords, run, run_processes, write_manifest
from sensors.simulator import MIN_PERIOD_MS, Plan, Simulation, SimulatorError, natural_rate, select_sensors
from sensors.timeparse import time_option


class Speed(click.ParamType):
    """`max`, or how many times real time: `60` or `60x`."""

    name = "SPEED"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text == "max":
            return float("inf")
        try:
            speed = float(text.removesuffix("x"))
        except ValueError:
            speed = 0.0
        if not speed > 0:
            self.fail(f"{value!r} is not 'max' or a positive number of times real time (e.g. 60x)", param, ctx)
        return speed


@click.command("simulate")
@registry_option
@home_option("broker passwords in HOME/secrets/mqtt-users.json, manifests in HOME/manifests")
@click.option(
    "--mqtt-url",
    default="mqtt://127.0.0.1:1883",
    show_default=True,
    envvar="SMARTCITY_MQTT_URL",
    help="Broker host and port, mqtts:// for TLS (its user is ignored: each vendor connects as itself) "
    "[env: SMARTCITY_MQTT_URL].",
)
@click.option(
    "--mqtt-ca-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SMARTCITY_MQTT_CA_FILE",
    help="CA (PEM) that signs the broker's certificate, for mqtts:// [default: the system's CAs] "
    "[env: SMARTCITY_MQTT_CA_FILE].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Live: messages per second [default: the fleet's own rate, each sensor every interval_s].",
)
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), help="Live: seconds to run [default: until Ctrl-C]."
)
@time_option("--from", "start", unit="ms", help="Replay readings from this time.")
@time_option("--to", "end", unit="ms", help="Replay up to this time [default: now].")
@click.option("--speed", type=Speed(), help="Replay pace: 'max' or times real time, e.g. 60x [default: max].")
@click.option(
    "--sensors", "sensor_count", type=click.IntRange(min=1), help="Only N sensors, spread over cities and kinds."
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same readings and faults.")
@click.option(
    "--faults",
    "fault_spec",
    default="none",
    show_default=True,
    help="Fault rates, e.g. 'default' or 'malformed_json=0.01,out_of_range=0.01,duplicate=0.02,silent=0.05' "
    "(malformed_json, out_of_range, unit_mismatch, ts_in_future, ts_too_old, unknown_sensor, duplicate, conflict, "
    "late, out_of_order, silent, drop).",
)
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the manifest [default: HOME/manifests/simulate-<start>.json].",
)
@click.option(
    "--max-inflight",
    type=click.IntRange(1, 65_535),
    default=1_000,
    show_default=True,
    help="Publishes awaiting their PUBACK at most (per process).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Publish from this many processes, each a share of the sensors with its own connections "
    "(one process sends about 10k messages/s); one manifest.",
)
def simulate_command(
    registry_paths: Sequence[Path],
    home: Path,
    mqtt_url: str,
    mqtt_ca_file: Path | None,
    rate: float | None,
    duration: float | None,
    start: int | None,
    end: int | None,
    speed: float | None,
    sensor_count: int | None,
    seed: int,
    fault_spec: str,
    manifest_path: Path | None,
    max_inflight: int,
    processes: int,
) -> None:
    """Publish a realistic fleet for Phuket and Chiang Mai over MQTT, with optional faults.

    Live (default): readings stamped now, for --duration seconds at --rate messages/s.
    Replay (--from/--to): the readings of a past range, at --speed. Values are a pure
    function of (seed, sensor, time): diurnal cycles, Chiang Mai's Feb-Apr haze, Phuket's
    monsoon rain and flood gauges, rush hours, parking, waste bins, energy meters.
    Each vendor publishes with its own broker account; readings of unregistered sensors
    (--faults unknown_sensor) come from the admin account, recorded as vendor '_gateway'.
    The manifest of what was sent is written at the end, also after Ctrl-C.
    """
    ctx = click.get_current_context()
    console = Console(stderr=True)
    now_ms = int(time.time() * 1000)
    replay = start is not None
    if not replay:
        for name, value in (("--to", end), ("--speed", speed)):
            if value is not None:
                raise click.UsageError(f"{name} needs --from (a replay); live runs use --rate and --duration")
    elif rate is not None or duration is not None:
        raise click.UsageError("--rate and --duration are for live runs; a replay (--from/--to) is paced by --speed")
    try:
        faults = parse_faults(fault_spec)
    except FaultSpecError as err:
        raise click.BadParameter(str(err).removeprefix("--faults: "), param_hint="--faults") from None
    registry = registry_from(registry_paths)
    sensors = select_sensors(registry, sensor_count)
    if not sensors:
        raise SimulatorError(f"the registry ({', '.join(map(str, registry.files))}) has no sensors to simulate")
    address = BrokerAddress.from_url(
        mqtt_url, mqtt_ca_file, "--mqtt-url / SMARTCITY_MQTT_URL", "--mqtt-ca-file / SMARTCITY_MQTT_CA_FILE"
    )

    if replay:
        assert start is not None
        end = now_ms if end is None else end
        if start >= end:
            raise click.BadParameter(f"{iso(start)} is not before --to {iso(end)}", param_hint="--from")
        if end > now_ms + MAX_FUTURE_MS:
            raise click.BadParameter(f"{iso(end)} is in the future; ingest rejects such readings", param_hint="--to")
        if start < now_ms - DEFAULT_MAX_AGE_MS:
            console.print(
                f"[yellow]warning:[/] readings before {iso(now_ms - DEFAULT_MAX_AGE_MS)} are older than ingest's "
                f"default acceptance window ({format_window(DEFAULT_MAX_AGE_MS)}): ingest rejects them as "
                "ts_too_old unless its accept_max_age_h is longer"
            )
        plan = Plan(start, end, seed, faults, wall_origin_ms=now_ms, speed=speed or float("inf"))
    else:
        natural = natural_rate(registry, sensors)
        scale = (rate / natural) if rate else 1.0
        min_interval_ms = min(registry.kinds[s.kind].interval_s for s in sensors) * 1000 / scale
        if min_interval_ms < MIN_PERIOD_MS:
            raise click.BadParameter(
                f"{rate:g} msgs/s would make each of the {len(sensors)} sensors report more than every "
                f"{MIN_PERIOD_MS:g} ms; use more --sensors or a lower rate",
                param_hint="--rate",
            )
        stop_ms = None if duration is None else now_ms + int(duration * 1000)
        plan = Plan(now_ms, stop_ms, seed, faults, time_scale=scale)

    simulation = Simulation(registry, sensors, plan)
    passwords = load_passwords(Home(home).broker_passwords, simulation.accounts)
    stop = threading.Event()
    tally = Tally(simulation.info)
    started = time.monotonic()
    failure: SimulatorError | None = None
    if processes == 1:
        publisher = Publisher(address, passwords, tally.ack, max_inflight=max_inflight, stop=stop)
        with _stop_on_signals(stop), _progress(console) as show, publisher:
            try:
                finished = run(simulation, publisher, tally, on_progress=show)
            except SimulatorError as err:  # e.g. the broker went away: still record what it acknowledged
                failure, finished = err, False
    else:
        with _stop_on_signals(stop), _progress(console) as show:
            try:
                finished = run_processes(
                    simulation,
                    address,
                    passwords,
                    tally,
                    processes,
                    max_inflight=max_inflight,
                    stop=stop,
                    on_progress=show,
                )
            except SimulatorError as err:  # what the others' brokers acknowledged is merged: record it
                failure, finished = err, False
    elapsed = time.monotonic() - started

    manifest = tally.manifest(
        {
            "mode": "replay" if replay else "live",
            "started_at": iso(now_ms),
            "finished_at": iso(time.time() * 1000),
            "elapsed_s": round(elapsed, 3),
            "interrupted": not finished,
            "error": str(failure) if failure else None,
            "from": iso(plan.start_ms),
            "to": iso(plan.end_ms) if plan.end_ms is not None else None,
            "speed": "max" if plan.speed == float("inf") else plan.speed,
            "rate": round(simulation.rate, 3),
            "time_scale": plan.time_scale,
            "seed": seed,
            "faults": format_faults(faults),
            "sensors": len(sensors),
            "processes": processes,
            "registry": [str(p) for p in registry.files],
            "broker": str(address),
        },
        simulation.silent,
        simulation.dropped,
    )
    path = manifest_path or Home(home).manifests / f"simulate-{iso(now_ms).replace(':', '')}.json"
    write_manifest(path, manifest)
    if failure is not None:
        raise SimulatorError(f"{failure}; what the broker acknowledged is in {path}")
    totals = manifest["totals"]
    click.echo(
        f"simulate: {totals['messages']:,} messages from {len(sensors) - len(simulation.silent):,} sensors in "
        f"{elapsed:.1f} s ({totals['messages'] / max(elapsed, 1e-9):,.0f}/s): {totals['good']:,} good, "
        f"{totals['duplicates']:,} duplicates, {sum(totals['rejected'].values()):,} to be rejected, "
        f"{sum(totals['refused'].values()):,} refused, {totals['unconfirmed']:,} unconfirmed; "
        f"{len(simulation.silent)} silent, {totals['dropped']:,} dropped; manifest {path}"
        + ("" if finished else " (interrupted)")
    )
    if not finished:
        ctx.exit(130)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM stop publishing; the acknowledgements are awaited and the manifest written."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _progress(console: Console) -> Iterator[Any]:
    """A live line (sent, acknowledged, msgs/s) on a terminal; nothing otherwise."""
    progress = Progress(
        TextColumn("simulate"),
        BarColumn(),
        TextColumn("{task.fields[sent]:,} sent, {task.fields[acked]:,} acked, {task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )
    task = progress.add_task("simulate", total=None, sent=0, acked=0, rate=0.0)

    def show(p: RunProgress) -> None:
        progress.update(
            task,
            total=p.expected,
            completed=p.published,
            sent=p.published,
            acked=p.acknowledged,
            rate=p.published / max(p.elapsed_s, 1e-9),
        )

    with progress:
        yield show


__all__ = ["simulate_command"]
