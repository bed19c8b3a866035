"""`smartcity demo`: the whole system end to end on this machine, with numbers that prove nothing was lost.

Stages, each timed (a line with its seconds when it ends, and a table at the end):

1. stack      local Mosquitto + InfluxDB with auth, one broker account per vendor (registry -> ACLs)
2. ingest     two `smartcity ingest` processes splitting the topic tree (Phuket / Chiang Mai)
3. replay     the simulator replays the last `hours` for `sensors` sensors, fast, with faults,
              from REPLAY_PROCESSES publisher processes
4. drain      until every good reading is in InfluxDB and every bad one in the reject store,
              and ingest closed its last spool segments of the replay
5. live       `minutes` of live publishing; meanwhile, as the replay's data is all in place and
              live readings leave the machine mostly idle:
   backfill   the Beam pipelines over the replayed hours: rollups, Thai AQI, health, anomalies;
              then the follow pipeline takes the live readings, from where the backfill ended
   dashboards Grafana provisioning built from the registry; every panel query run against InfluxDB
   production the audit operators run without manifests (`audit --production`) over the replay:
              the spool against InfluxDB, and the readings the simulator's `drop` fault left out
              on purpose before the broker, found again as gaps in the sensors' `seq`
6. settle     ingest stops (closing its segments), the follow pipeline catches up
7. audit      published = stored + rejected, per vendor, sensor and hour
8. production the same over the live minute
9. report     static HTML pages per super-cluster

Re-running is safe: the stack is reused, readings are idempotent by (sensor_id, ts)
and each run audits its own manifests. Ctrl-C stops the processes the demo
started and leaves the stack running (`smartcity stack down` stops it).

Why one file of about 600 lines: it reads top to bottom as the stages above, in order, each a
short function that runs the `smartcity` command a user would run, or calls the package that
does the work (`deploy.stack`, `deploy.audit`, `deploy.production_audit`, `pipelines`);
splitting it would scatter one script that a first-time user reads to see how the pieces fit.
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
from rich.status import Status
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
from sensors.spool import OPEN_SUFFIX, READINGS, SegmentInfo, closed_segments
from storage.query import QueryClient, ident
from storage.schema import INGEST_MEASUREMENT
from storage.settings import InfluxSettings

if TYPE_CHECKING:  # pipelines.run imports Beam, which takes seconds: imported when the stage runs
    from pipelines.run import RunReport

# Ingest closes segments this often in the demo, so the pipelines see readings within seconds.
DEMO_SEGMENT_AGE_S = 5
DRAIN_TIMEOUT_S = 300
# One Python publisher sends about 10k messages/s; two keep this 2-core machine's broker and ingest busy.
REPLAY_PROCESSES = 2
# The everyday faults, and readings lost before the broker, which only the sensors' `seq` reveals.
DEMO_FAULTS = "default,drop=0.002"
STOP_TIMEOUT_S = 15
INGEST_START_TIMEOUT_S = 30


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
    during: str | None = None  # the stage it ran alongside (its seconds are within that one's)
    ok: bool = True


@dataclass
class DemoResult:
    stages: list[StageResult] = field(default_factory=list)
    wall_s: float = 0.0
    audit: AuditResult | None = None
    production: list[ProductionAudit] = field(default_factory=list)  # one per simulator run's time range
    dropped: int = 0  # readings the simulator's `drop` fault never sent, on purpose
    published: int = 0
    duplicates: int = 0
    rollup_points: int = 0
    aqi_now: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # district -> (time, aqi, band)
    report_index: Path | None = None


@dataclass
class Note:
    """What a running stage says: its latest line (the spinner shows it, the summary keeps it); `ok=False`
    marks a stage whose finding fails the demo (a red cross). Calling it sets both."""

    name: str
    text: str
    started: float = field(default_factory=time.monotonic)
    ok: bool = True

    def __call__(self, text: str, ok: bool = True) -> None:
        self.text, self.ok = text, ok


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
        self._open: list[Note] = []  # the stages running, outermost first (the spinner shows the last)

    # -- plumbing ----------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str, doing: str) -> Iterator[Note]:
        """Time a stage, show a spinner with its latest note and its seconds so far while it runs, and one
        line when it ends.

        A stage opened within another one (work done while that one waits) shares the spinner and
        its line says so; its seconds are part of the other's."""
        outer = self._open[-1] if self._open else None
        note = Note(name, doing)
        self._open.append(note)
        try:
            if outer is None:
                with self.console.status(f"[bold]{name}[/]: {doing}") as status, self._ticking(status):
                    yield note
            else:
                yield note
        finally:
            self._open.pop()
        seconds = time.monotonic() - note.started
        during = outer.name if outer is not None else None
        self.result.stages.append(StageResult(name, seconds, note.text, during, note.ok))
        mark = "[green]✓[/]" if note.ok else "[bold red]✗[/]"
        where = f" (during {during})" if during else ""
        self.console.print(f"{mark} {name:<11} {seconds:6.1f} s{where}  {note.text}")

    @contextmanager
    def _ticking(self, status: Status) -> Iterator[None]:
        """Redraw the spinner's line twice a second: the innermost stage running, its note, its seconds."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                if self._open:
                    note = self._open[-1]
                    seconds = time.monotonic() - note.started
                    status.update(f"[bold]{note.name}[/]: {note.text} [dim]{seconds:.0f} s[/]")

        thread = threading.Thread(target=tick, name="demo-status", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def smartcity(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "deploy.cli", *args]

    def run_cli(self, *args: str, what: str, log: str | None = None) -> str:
        return self.finish_cli(self.start_cli(*args), what=what, log=log)

    def start_cli(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.smartcity(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def finish_cli(self, process: subprocess.Popen[str], *, what: str, log: str | None = None) -> str:
        """Wait for a command started with `start_cli`; its output, or a DemoError with its last line (and
        all of its output in `log`, in the demo's folder, when given)."""
        try:
            stdout, stderr = process.communicate()
        finally:
            if process.poll() is None:  # interrupted while waiting: stop it (a simulator writes its manifest)
                process.terminate()
                process.wait(STOP_TIMEOUT_S)
        if process.returncode != 0:
            lines = (stderr or stdout).strip().splitlines()
            where = ""
            if log is not None:
                (self.home / "demo" / log).write_text(stdout + stderr, encoding="utf-8")
                where = f"; see {self.home / 'demo' / log}"
            raise DemoError(f"{what} failed (exit {process.returncode}): {lines[-1] if lines else 'no output'}{where}")
        return stdout.strip()

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
        started = time.monotonic()
        try:
            self._run()
        finally:
            self.stop_processes()
            self.result.wall_s = time.monotonic() - started
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
            started: list[tuple[subprocess.Popen[bytes], Path, int]] = []
            for city in sorted(self.registry.cities):
                log = self.home / "demo" / f"ingest-{city}.log"
                offset = log.stat().st_size if log.exists() else 0  # the logs of earlier runs are kept
                process = self.spawn(
                    "-v",  # logs "subscribed to", which the replay must wait for
                    "ingest",
                    "--client-id",
                    f"demo-{city}",
                    "--topics",
                    f"smartcity/v1/{city}/#",
                    "-q",
                    log=log.name,
                )
                started.append((process, log, offset))
            for process, log, offset in started:
                self.wait_for_log(process, log, offset, "subscribed to")
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
                "--processes",
                str(REPLAY_PROCESSES),
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
            stored = note.text
            # The backfill reads closed segments: ingest closes its last ones DEMO_SEGMENT_AGE_S after their
            # first reading. Those are the replay's, for the backfill; the follow pipeline takes the later ones.
            replayed = self.wait_for_closed_segments(note)
            note(f"{stored}; spool segments closed")

        live_manifest = self.layout.manifests / f"demo-{stamp}-live.json"
        stop_follow = threading.Event()
        with self.stage("live", f"{options.minutes:g} min of live readings, pipeline following") as note:
            live = self.start_cli(
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
            )
            try:
                # The live minute leaves the machine mostly idle: what needs only the replay's data runs now.
                with self.stage("backfill", "Beam pipelines over the replayed hours") as backfill:
                    report = self.backfill(replay_from, now, replayed, influx)
                    self.result.rollup_points += report.points_written
                    backfill(
                        f"{report.readings:,} readings -> {report.points_written:,} points "
                        f"({report.readings / max(report.seconds, 1e-9):,.0f} readings/s)"
                    )
                # From where the backfill ended: the live readings that arrived meanwhile, then as they come.
                follow = self.start_follow(influx, stop_follow)
                self.check_dashboards(influx, since=now)
                self.audit_production("replay", replay_manifest, influx)
            except BaseException:
                live.terminate()  # it writes its manifest and exits
                live.communicate()
                raise
            summary = self.finish_cli(live, what="simulate (live)")
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

        with self.stage("audit", "published = stored + rejected") as note:
            loaded = [load_manifest(p) for p in manifests]
            self.result.published = sum(m.messages for m in loaded)
            self.result.duplicates = sum(m.duplicates for m in loaded)
            result = audit(loaded, influx, self.registry, self.layout.spool)
            self.result.audit = result
            total = result.total()
            note(
                f"{'balanced' if result.balanced else 'NOT balanced'}: {total.stored:,} stored, "
                f"{total.missing:,} lost, {total.rejects_stored - total.reject_duplicates:,} rejections kept",
                ok=result.balanced,
            )

        self.audit_production("live", live_manifest, influx)

        with self.stage("report", "writing the HTML report") as note:
            from deploy.report import write_report

            report_index = write_report(self.home / "report", settings=influx, registry=self.registry).index
            self.result.report_index = report_index
            self.result.aqi_now = self.latest_aqi(influx)
            note(str(report_index))

    def check_dashboards(self, influx: InfluxSettings, since: datetime) -> None:
        with self.stage("dashboards", "building and checking every panel query") as note:
            # The operations panels read ingest's own metrics, written every metrics_interval_s: with a short
            # replay the check can come before the first report that counts it.
            self.wait_for_ingest_reports(influx, since, note)
            note("building and checking every panel query")
            out = self.home / "grafana"
            self.run_cli("dashboards", "build", "--out", str(out), what="dashboards build")
            checked = self.run_cli(
                "dashboards", "check", "--expect-data", what="dashboards check", log="dashboards-check.log"
            )
            note(" ".join(checked.split()) if checked else "checked")

    def audit_production(self, what: str, manifest: Path, influx: InfluxSettings) -> None:
        """The production audit over a simulator run's time range, told which readings its `drop` fault
        left out on purpose (production has no such list: there every seq gap is a loss)."""
        run = load_manifest(manifest)
        with self.stage("production", "the spool against InfluxDB, without manifests") as note:
            dropped = _dropped(manifest)
            found = production_audit(influx, self.registry, self.layout.spool, run.start, run.end, dropped=dropped)
            self.result.production.append(found)
            self.result.dropped += sum(dropped.values())
            note(production_note(what, found, sum(dropped.values())), ok=found.balanced)

    def wait_for_ingest_reports(self, influx: InfluxSettings, since: datetime, note: Note) -> None:
        """Until each ingest process wrote a self-metrics report (measurement `ingest`) at or after `since`."""
        deadline = time.monotonic() + INGEST_START_TIMEOUT_S
        with QueryClient(influx) as client:
            while True:
                series = client.query(
                    "SELECT count({f}) FROM {m} WHERE time >= {since} GROUP BY instance",
                    {"f": ident("received"), "m": ident(influx.raw_rp, INGEST_MEASUREMENT), "since": since},
                )
                if len(series) >= len(self.registry.cities):  # one ingest process per city
                    return
                if time.monotonic() > deadline:
                    raise DemoError(f"ingest wrote no self-metrics within {INGEST_START_TIMEOUT_S} s")
                note("waiting for ingest's next self-metrics report")
                time.sleep(0.5)

    def wait_for_log(self, process: subprocess.Popen[bytes], log: Path, offset: int, text: str) -> None:
        """Until `text` is in `log` after `offset` (a fresh ingest session misses what is published before
        it subscribes)."""
        deadline = time.monotonic() + INGEST_START_TIMEOUT_S
        while True:
            with open(log, "rb") as handle:
                handle.seek(offset)
                if text.encode() in handle.read():
                    return
            if process.poll() is not None:
                raise DemoError(f"ingest exited at start (code {process.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise DemoError(f"ingest did not subscribe within {INGEST_START_TIMEOUT_S} s; see {log}")
            time.sleep(0.05)

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

    def wait_for_closed_segments(self, note: Note) -> list[SegmentInfo]:
        """Until no reading segment is open (nothing new arrives between replay and live); the closed ones."""
        spool = self.pipeline_settings().spool_root
        deadline = time.monotonic() + DEMO_SEGMENT_AGE_S + STOP_TIMEOUT_S
        while open_segments := sorted(spool.glob(f"*/{READINGS}-*{OPEN_SUFFIX}")):
            if time.monotonic() > deadline:
                raise DemoError(f"ingest did not close {open_segments[0]} within {DEMO_SEGMENT_AGE_S} s")
            note(f"ingest closes its last segments ({len(open_segments)} open)")
            time.sleep(0.2)
        return closed_segments(spool, READINGS)

    def pipeline_settings(self) -> PipelineSettings:
        # The follow pipeline looks for closed segments this often (a directory listing): the demo waits for it.
        return PipelineSettings.from_env(self.env, home=self.home, poll_interval_s=0.5)

    def backfill(
        self, start: datetime, end: datetime, replayed: Sequence[SegmentInfo], influx: InfluxSettings
    ) -> RunReport:
        settings = self.pipeline_settings()
        run = load_run()
        plan = run.Plan.bounded(run.PIPELINES, int(start.timestamp() * 1000), int(end.timestamp() * 1000))
        report = run.run_plan(plan, settings, self.registry, (), influx)
        # The follow pipeline continues after what the backfill covered: the replay's segments, not the live
        # ones that closed meanwhile.
        checkpoint = Checkpoint.load(settings.checkpoint_path)
        checkpoint.mark_done(list(replayed))
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
            time.sleep(0.25)
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


def production_note(what: str, found: ProductionAudit, dropped: int) -> str:
    """One line: loss after ingest (must be none), then the seq gaps told apart: those the simulator's `drop`
    fault made on purpose, and any other (a loss before ingest, which fails the demo)."""
    total = found.total()
    after = total.missing + found.spool_lost
    if after:
        accepted = (
            f"{after:,} accepted readings LOST after ingest ({total.accepted:,} accepted, {total.stored:,} stored)"
        )
    else:
        accepted = f"nothing accepted was lost ({total.accepted:,} accepted, {total.stored:,} stored)"
    other = f"{total.seq_gaps:,} other seq gaps: readings LOST before ingest" if total.seq_gaps else "no other seq gap"
    if not dropped:
        return f"{what}: {accepted}; the simulator dropped no reading in this run, {other}"
    return (
        f"{what}: {accepted}; {total.seq_dropped:,} seq gaps are readings the simulator dropped on purpose "
        f"(its drop fault left out {dropped:,}; SenML sensors send no seq), {other}"
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
        during = f"(during {stage.during}) " if stage.during else ""
        stages.add_row(stage.name, f"{stage.seconds:.1f}", during + stage.detail, style=None if stage.ok else "red")
    stages.add_row("total", f"{result.wall_s:.1f}", "from start to end (stages during others overlap)", style="bold")
    console.print(stages)
    if result.audit is not None:
        total = result.audit.total()
        figures = Table("figure", "value", title="what went through")
        figures.add_row("messages published (acknowledged by the broker)", f"{result.published:,}")
        figures.add_row("duplicates among them (QoS 1 resends, stored once)", f"{result.duplicates:,}")
        figures.add_row("readings accepted (distinct sensor, ts)", f"{total.expected:,}")
        figures.add_row("readings stored raw in InfluxDB", f"{total.stored:,}")
        figures.add_row("readings lost", f"{total.missing:,}")
        figures.add_row("readings the simulator left out on purpose (drop fault, never sent)", f"{result.dropped:,}")
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
