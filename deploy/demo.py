"""`smartcity demo`: the whole system end to end on this machine, with numbers that prove nothing was lost.

Stages, each timed:

1. stack      local Mosquitto + InfluxDB with auth, one broker account per vendor (registry -> ACLs)
2. ingest     two `smartcity ingest` processes splitting the topic tree (Phuket / Chiang Mai)
3. replay     the simulator replays the last `hours` for `sensors` sensors, fast, with faults
4. drain      until every good reading is in InfluxDB and every bad one in the reject store
5. backfill   the Beam pipelines over the replayed hours: rollups, Thai AQI, health, anomalies
6. live       `minutes` of live publishing while the pipeline follows the spool
7. settle     ingest stops (closing its segments), the follow pipeline catches up
8. dashboards Grafana provisioning built from the registry; every panel query run against InfluxDB
9. audit      published = stored + rejected, per vendor, sensor and hour
10. production the audit operators run without manifests (`audit --production`): the spool
              against InfluxDB, and the readings the simulator's `drop` fault lost before the
              broker found again as gaps in the sensors' `seq`
11. report    static HTML pages per super-cluster

Re-running is safe: the stack is reused, readings are idempotent by (sensor_id, ts)
and each run audits its own manifests. Ctrl-C stops the processes the demo
started and leaves the stack running (`smartcity stack down` stops it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from deploy.audit import AuditResult, audit, load_manifest
from deploy.production_audit import ProductionAudit, print_production, production_audit
from deploy.stack import Stack
from pipelines import load_run
from pipelines.settings import PipelineSettings
from sensors.checkpoint import Checkpoint
from sensors.errors import SmartcityError
from sensors.home import Home
from sensors.registry import Registry
from sensors.spool import READINGS, closed_segments
from storage.query import QueryClient, ident
from storage.settings import InfluxSettings

if TYPE_CHECKING:  # pipelines.run imports Beam, which takes seconds: imported when the stage runs
    from pipelines.run import RunReport

# Ingest closes segments this often in the demo, so the pipelines see readings within seconds.
DEMO_SEGMENT_AGE_S = 5
DRAIN_TIMEOUT_S = 300
# The everyday faults, and readings lost before the broker, which only the sensors' `seq` reveals.
DEMO_FAULTS = "default,drop=0.002"
STOP_TIMEOUT_S = 15


class DemoError(SmartcityError):
    """A stage of the demo failed; the message names it."""


@dataclass(frozen=True)
class DemoOptions:
    home: Path
    minutes: float = 1.0
    hours: int = 24
    sensors: int = 0  # 0: the whole fleet
    seed: int = 42
    mqtt_port: int = 1883
    influx_port: int = 8086
    mqtt_tls_port: int = 8883
    registry_paths: Sequence[Path] = ()


@dataclass
class StageResult:
    name: str
    seconds: float
    detail: str


@dataclass
class DemoResult:
    stages: list[StageResult] = field(default_factory=list)
    audit: AuditResult | None = None
    production: list[ProductionAudit] = field(default_factory=list)  # one per simulator run's time range
    dropped: int = 0  # readings the simulator's `drop` fault never sent
    dropped_numbered: int = 0  # of those, at sensors that send `seq` (JSON vendors)
    published: int = 0
    duplicates: int = 0
    rollup_points: int = 0
    aqi_now: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # district -> (time, aqi, band)
    report_index: Path | None = None


class Demo:
    def __init__(self, options: DemoOptions, registry: Registry, console: Console) -> None:
        self.options = options
        self.registry = registry
        self.console = console
        self.home = options.home.resolve()
        self.layout = Home(self.home)  # the demo's ingest processes use the default spool under it
        self.stack = Stack(self.home)
        self.result = DemoResult()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env: dict[str, str] = {}

    # -- plumbing ----------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str, doing: str) -> Iterator[Callable[[str], None]]:
        """Time a stage, show a spinner while it runs and one line when it ends."""
        details: list[str] = []
        started = time.monotonic()
        with self.console.status(f"[bold]{name}[/]: {doing}") as status:

            def note(text: str) -> None:
                details.append(text)
                status.update(f"[bold]{name}[/]: {text}")

            yield note
        seconds = time.monotonic() - started
        detail = details[-1] if details else doing
        self.result.stages.append(StageResult(name, seconds, detail))
        self.console.print(f"[green]✓[/] {name:<11} {seconds:6.1f} s  {detail}")

    def smartcity(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "deploy.cli", *args]

    def run_cli(self, *args: str, what: str) -> str:
        done = subprocess.run(self.smartcity(*args), env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise DemoError(f"{what} failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}")
        return done.stdout.strip()

    def spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        handle = open(self.home / "demo" / log, "ab")  # noqa: SIM115 - the process owns it until it ends
        process = subprocess.Popen(
            self.smartcity(*args), env=self.env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        handle.close()
        self.processes.append(process)
        return process

    def stop_processes(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    # -- stages --------------------------------------------------------------------------

    def run(self) -> DemoResult:
        try:
            self._run()
        finally:
            self.stop_processes()
        return self.result

    def _run(self) -> None:
        options = self.options
        (self.home / "demo").mkdir(parents=True, exist_ok=True)
        with self.stage("stack", "starting Mosquitto and InfluxDB") as note:
            ports = self.stack.up(
                mqtt_port=options.mqtt_port,
                influx_port=options.influx_port,
                mqtt_tls_port=options.mqtt_tls_port,
                registry=self.registry,
                on_step=note,
            )
            self.env = dict(os.environ)
            self.env.update(_read_env(self.stack.env_path))
            self.env["SMARTCITY_INGEST_SEGMENT_MAX_AGE_S"] = str(DEMO_SEGMENT_AGE_S)
            # The replay publishes up to `hours` old readings at once: widen ingest's acceptance window
            # (72 h by default, a gateway's buffer) to cover them.
            self.env.setdefault("SMARTCITY_INGEST_ACCEPT_MAX_AGE_H", str(max(72, options.hours + 2)))
            if options.registry_paths:
                self.env["SMARTCITY_REGISTRY"] = os.pathsep.join(str(p) for p in options.registry_paths)
            note(
                f"mqtt 127.0.0.1:{ports.mqtt}, influxdb 127.0.0.1:{ports.influx}, "
                f"{len(self.registry.vendors)} vendor accounts"
            )
        influx = InfluxSettings.from_env(self.env)

        with self.stage("ingest", "starting two ingest processes") as note:
            for city in sorted(self.registry.cities):
                self.spawn(
                    "ingest",
                    "--client-id",
                    f"demo-{city}",
                    "--topics",
                    f"smartcity/v1/{city}/#",
                    "-q",
                    log=f"ingest-{city}.log",
                )
            time.sleep(1.5)
            for process in self.processes:
                if process.poll() is not None:
                    raise DemoError(f"ingest exited at start (code {process.returncode}); see {self.home / 'demo'}")
            note(f"{len(self.processes)} processes, one per city, each with its own session and spool stream")

        now = datetime.now(UTC).replace(microsecond=0)
        replay_from = now - timedelta(hours=options.hours)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        replay_manifest = self.layout.manifests / f"demo-{stamp}-replay.json"
        sensors = ["--sensors", str(options.sensors)] if options.sensors else []
        with self.stage("replay", f"publishing the last {options.hours} h") as note:
            summary = self.run_cli(
                "simulate",
                "--from",
                f"{replay_from:%Y-%m-%dT%H:%M:%SZ}",
                "--to",
                f"{now:%Y-%m-%dT%H:%M:%SZ}",
                "--speed",
                "max",
                "--faults",
                DEMO_FAULTS,
                "--seed",
                str(options.seed),
                *sensors,
                "--manifest",
                str(replay_manifest),
                what="simulate (replay)",
            )
            note(summary.splitlines()[-1].split(";")[0] if summary else "done")

        with self.stage("drain", "waiting for ingest to store everything") as note:
            self.wait_for_ingest([replay_manifest], influx, note)

        with self.stage("backfill", "Beam pipelines over the replayed hours") as note:
            report = self.backfill(replay_from, now, influx)
            self.result.rollup_points += report.points_written
            note(
                f"{report.readings:,} readings -> {report.points_written:,} points "
                f"({report.readings / max(report.seconds, 1e-9):,.0f} readings/s)"
            )

        live_manifest = self.layout.manifests / f"demo-{stamp}-live.json"
        with self.stage("live", f"{options.minutes:g} min of live readings, pipeline following") as note:
            stop_follow = threading.Event()
            follow = self.start_follow(influx, stop_follow)
            summary = self.run_cli(
                "simulate",
                "--duration",
                f"{options.minutes * 60:g}",
                "--faults",
                DEMO_FAULTS,
                "--seed",
                str(options.seed),
                *sensors,
                "--manifest",
                str(live_manifest),
                what="simulate (live)",
            )
            note(summary.splitlines()[-1].split(";")[0] if summary else "done")

        manifests = [replay_manifest, live_manifest]
        with self.stage("settle", "ingest drains and stops, the follow pipeline catches up") as note:
            self.wait_for_ingest([live_manifest], influx, note)
            self.stop_processes()
            self.wait_for_follow(note)
            stop_follow.set()
            follow.join(timeout=120)
            note(f"follow pipeline wrote {self.follow_points:,} points")
            self.result.rollup_points += self.follow_points

        with self.stage("dashboards", "building and checking every panel query") as note:
            out = self.home / "grafana"
            self.run_cli("dashboards", "build", "--out", str(out), what="dashboards build")
            checked = self.run_cli("dashboards", "check", "--expect-data", what="dashboards check")
            note(" ".join(checked.split()) if checked else "checked")

        with self.stage("audit", "published = stored + rejected") as note:
            loaded = [load_manifest(p) for p in manifests]
            self.result.published = sum(m.messages for m in loaded)
            self.result.duplicates = sum(m.duplicates for m in loaded)
            result = audit(loaded, influx, self.registry, self.layout.spool)
            self.result.audit = result
            total = result.total()
            note(
                f"{'balanced' if result.balanced else 'NOT balanced'}: {total.stored:,} stored, "
                f"{total.missing:,} lost, {total.rejects_stored - total.reject_duplicates:,} rejections kept"
            )

        with self.stage("production", "the spool against InfluxDB, without manifests") as note:
            for manifest in loaded:
                found = production_audit(influx, self.registry, self.layout.spool, manifest.start, manifest.end)
                self.result.production.append(found)
            for path in manifests:
                for sensor_id, count in _dropped(path).items():
                    self.result.dropped += count
                    sensor = self.registry.sensors.get(sensor_id)
                    if sensor is not None and self.registry.vendors[sensor.vendor].payload == "json":
                        self.result.dropped_numbered += count
            note(production_note(self.result))

        with self.stage("report", "writing the HTML report") as note:
            from deploy.report import write_report

            report_index = write_report(self.home / "report", settings=influx, registry=self.registry).index
            self.result.report_index = report_index
            self.result.aqi_now = self.latest_aqi(influx)
            note(str(report_index))

    def wait_for_ingest(self, manifests: Sequence[Path], influx: InfluxSettings, note: Callable[[str], None]) -> None:
        """Poll the audit until every reading of `manifests` is stored and every rejection kept."""
        loaded = [load_manifest(p) for p in manifests]
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise DemoError(f"an ingest process exited (code {process.returncode}); see {self.home / 'demo'}")
            result = audit(loaded, influx, self.registry, self.layout.spool)
            total = result.total()
            note(
                f"{total.stored:,} of {total.expected:,} readings stored, "
                f"{total.rejects_stored:,} of {total.rejects_expected:,} rejections kept"
            )
            rejections = total.rejects_stored + total.rejects_not_stored  # not kept: over a vendor's budget
            if total.stored >= total.expected and rejections >= total.rejects_expected:
                return
            if time.monotonic() > deadline:
                raise DemoError(f"ingest did not store everything within {DRAIN_TIMEOUT_S} s; see {self.home / 'demo'}")
            time.sleep(1.0)

    def pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings.from_env(self.env, home=self.home, poll_interval_s=2.0)

    def backfill(self, start: datetime, end: datetime, influx: InfluxSettings) -> RunReport:
        run = load_run()

        settings = self.pipeline_settings()
        # Everything replayed must be in closed segments: ingest closes them by age.
        time.sleep(DEMO_SEGMENT_AGE_S + 1)
        plan = run.Plan.bounded(run.PIPELINES, int(start.timestamp() * 1000), int(end.timestamp() * 1000))
        report = run.run_plan(plan, settings, self.registry, (), influx)
        # The follow pipeline continues after what the backfill covered.
        checkpoint = Checkpoint.load(settings.checkpoint_path)
        checkpoint.mark_done(closed_segments(settings.spool_root, READINGS))
        checkpoint.hours_done_ms = plan.end_ms
        checkpoint.save(settings.checkpoint_path)
        return report

    follow_points = 0

    def start_follow(self, influx: InfluxSettings, stop: threading.Event) -> threading.Thread:
        run = load_run()

        settings = self.pipeline_settings()

        def on_report(report: RunReport) -> None:
            self.follow_points += report.points_written

        thread = threading.Thread(
            target=run.follow,
            args=(settings, self.registry, (), influx),
            kwargs={"stop": stop, "on_report": on_report},
            name="follow-pipeline",
            daemon=True,
        )
        thread.start()
        return thread

    def wait_for_follow(self, note: Callable[[str], None]) -> None:
        settings = self.pipeline_settings()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            checkpoint = Checkpoint.load(settings.checkpoint_path)
            pending = [s for s in closed_segments(settings.spool_root, READINGS) if not checkpoint.is_done(s)]
            if not pending:
                return
            note(f"follow pipeline: {len(pending)} segments to go")
            time.sleep(1.0)
        raise DemoError(f"the follow pipeline did not catch up within {DRAIN_TIMEOUT_S} s")

    def latest_aqi(self, influx: InfluxSettings) -> dict[str, tuple[str, int, int]]:
        latest: dict[str, tuple[str, int, int]] = {}
        with QueryClient(influx) as client:
            series = client.query(
                "SELECT aqi, band FROM {m} WHERE level = 'district' GROUP BY area ORDER BY time DESC LIMIT 1",
                {"m": ident(influx.rollup_rp, "aqi_1h")},
            )
        for s in series:
            for row in s.values:
                latest[s.tags.get("area", "?")] = (f"{row[0]:%Y-%m-%d %H:00}Z", int(row[1]), int(row[2]))
        return latest


def _dropped(manifest: Path) -> dict[str, int]:
    """Sensor id -> readings the simulator's `drop` fault never sent, from a manifest."""
    import json

    sensors = json.loads(manifest.read_text(encoding="utf-8"))["sensors"]
    return {sensor_id: int(info.get("dropped", 0)) for sensor_id, info in sensors.items()}


def production_note(result: DemoResult) -> str:
    """One line: loss after ingest (must be none) and before it (the drop fault, seen through seq)."""
    totals = [p.total() for p in result.production]
    after = sum(t.missing for t in totals) + sum(p.spool_lost for p in result.production)
    return (
        f"{sum(t.accepted for t in totals):,} accepted, {sum(t.stored for t in totals):,} stored, "
        f"{after:,} lost after ingest; {sum(t.seq_gaps for t in totals):,} lost before ingest "
        f"(seq gaps; the simulator dropped {result.dropped:,}, {result.dropped_numbered:,} of them at sensors "
        "that send seq: the others send SenML)"
    )


def _read_env(path: Path) -> dict[str, str]:
    import shlex

    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


def print_summary(result: DemoResult, registry: Registry, console: Console) -> None:
    stages = Table("stage", "seconds", "what happened", title="smartcity demo")
    for stage in result.stages:
        stages.add_row(stage.name, f"{stage.seconds:.1f}", stage.detail)
    stages.add_row("total", f"{sum(s.seconds for s in result.stages):.1f}", "", style="bold")
    console.print(stages)
    if result.audit is not None:
        total = result.audit.total()
        figures = Table("figure", "value", title="what went through")
        figures.add_row("messages published (acknowledged by the broker)", f"{result.published:,}")
        figures.add_row("duplicates among them (QoS 1 resends, stored once)", f"{result.duplicates:,}")
        figures.add_row("readings accepted (distinct sensor, ts)", f"{total.expected:,}")
        figures.add_row("readings stored raw in InfluxDB", f"{total.stored:,}")
        figures.add_row("readings lost", f"{total.missing:,}")
        for code, count in sorted(result.audit.stored_by_code.items()):
            figures.add_row(f"rejected: {code}", f"{count:,}")
        figures.add_row("rollup, AQI, health and anomaly points written", f"{result.rollup_points:,}")
        console.print(figures)
    for found in result.production:
        print_production(found, console)
    if result.aqi_now:
        from sensors.aqi import band_for

        aqi = Table("district", "hour", "Thai AQI", "band", title="AQI now, per district")
        for district, (hour, value, band) in sorted(result.aqi_now.items()):
            name = registry.districts[district].name if district in registry.districts else None
            label = band_for(value).label_en if value >= 0 else "?"
            aqi.add_row(f"{name.en} ({name.th})" if name else district, hour, str(value), f"{band} {label}")
        console.print(aqi)
    if result.report_index:
        console.print(f"report: {result.report_index}")
