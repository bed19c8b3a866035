"""What the system scenarios share: a fleet load with its manifest, fault bookkeeping, InfluxDB dumps.

- `Load` replays the simulator's fleet (`sensors.simulator`, `sensors.publisher`) through the real
  broker at a steady rate from a thread, with each vendor's own account, and
  writes the manifest `deploy.audit` joins with InfluxDB and the reject store.
  It remembers when the broker acknowledged each message, so a scenario knows
  what was published during a fault and what had to be stored after it.
- `Faults` times each injected fault (start, end, recovery) for the report.
- `SmartcityProcess` is any `smartcity` subcommand as a real process
  (`tests.ingest.helpers.IngestProcess` for ingest itself).
- `dump` is a canonical dump of InfluxDB (measurements, tag and field keys,
  series, points), to compare two runs exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.audit import AuditResult, audit, load_manifest
from deploy.servers import basic_auth
from deploy.stack import INFLUX_ADMIN
from sensors.broker_url import BrokerAddress
from sensors.faults import Fault
from sensors.publisher import Publisher, Tally, iso, load_passwords, write_manifest
from sensors.reading import verify_line
from sensors.registry import Registry, default_registry
from sensors.simulator import DUPLICATE, HOUR_MS, STORED, Message, Plan, Simulation, select_sensors
from sensors.spool import iter_lines
from storage import schema
from storage.settings import InfluxSettings
from tests.ingest.helpers import IngestProcess, wait_until
from tests.servers import StackHandle

DB = "smartcity"
# The services' own measurements (counters, self-tests), next to the readings in the raw retention policy.
SELF_MEASUREMENTS = (
    schema.INGEST_MEASUREMENT,
    schema.INGEST_VENDORS_MEASUREMENT,
    schema.INGEST_REJECTS_MEASUREMENT,
    schema.SELFTEST_MEASUREMENT,
)
# Everyday faults that ingest must answer with a reject code, plus the ones it must store once.
EVERYDAY_FAULTS: dict[Fault, float] = {
    Fault.MALFORMED_JSON: 0.004,
    Fault.OUT_OF_RANGE: 0.004,
    Fault.UNIT_MISMATCH: 0.002,
    Fault.TS_IN_FUTURE: 0.002,
    Fault.TS_TOO_OLD: 0.002,
    Fault.UNKNOWN_SENSOR: 0.002,
    Fault.DUPLICATE: 0.02,
    Fault.LATE: 0.01,
    Fault.OUT_OF_ORDER: 0.01,
}
# Only faults whose readings are stored: duplicates, late and out-of-order readings.
STORED_FAULTS: dict[Fault, float] = {Fault.DUPLICATE: 0.05, Fault.LATE: 0.02, Fault.OUT_OF_ORDER: 0.05}


def seeded(seed: int, scenario: str) -> random.Random:
    """The scenario's own random stream: the same seed replays the same fault points."""
    return random.Random(f"{seed}:{scenario}")


# -- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    at: float  # time.monotonic() of the PUBACK
    sensor_id: str
    ts: int
    category: str


# Replayed readings must be accepted: at most a minute old at the end, and at most this old at the
# start, so that the `ts_in_future` fault (local time sent as UTC: +7 h) is still in the future.
OLDEST_REPLAY_MS = 6 * HOUR_MS + 50 * 60_000


class Load(threading.Thread):
    """The fleet's readings replayed at `rate` messages/s for about `duration_s`, from a thread.

    Stop it early with `stop()`; `finish()` waits for the last PUBACKs and writes the manifest.
    `reorder` publishes its rearrangement of the messages instead, one every 1/`rate` s.
    """

    def __init__(
        self,
        stack: StackHandle,
        manifest: Path,
        *,
        rate: float,
        duration_s: float,
        seed: int,
        sensors: int = 200,
        faults: Mapping[Fault, float] = EVERYDAY_FAULTS,
        start_ms: int | None = None,
        registry: Registry | None = None,
        reorder: Callable[[list[Message]], list[Message]] | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"load-{manifest.stem}")
        self.stack = stack
        self.manifest_path = manifest
        self.registry = registry or default_registry()
        chosen = select_sensors(self.registry, sensors)
        self.started_ms = now = int(time.time() * 1000)
        speed = rate / Simulation(self.registry, chosen, Plan(now, None)).rate  # simulated per wall second
        span_ms = int(duration_s * speed * 1000) // 60_000 * 60_000 or 60_000  # whole minutes: exact audit bounds
        start = now - now % 60_000 - 60_000 - span_ms if start_ms is None else start_ms
        if start < now - OLDEST_REPLAY_MS:
            raise ValueError(f"{rate}/s for {duration_s} s is {span_ms / HOUR_MS:.1f} h of {sensors} sensors: too long")
        self.start_ms, self.end_ms = start, start + span_ms
        self.plan = Plan(start, self.end_ms, seed, dict(faults), speed=speed)
        self.rate = rate
        self.reorder = reorder
        self.simulation = Simulation(self.registry, chosen, self.plan)
        self.kinds = sorted({s.kind for s in chosen})
        self.tally = Tally(self.simulation.info)
        self.acks: list[Ack] = []
        self._halt = threading.Event()
        self.error: BaseException | None = None
        passwords = load_passwords(stack.stack.mqtt_users_path, self.simulation.accounts)
        address = BrokerAddress("127.0.0.1", stack.mqtt_port, tls=False)
        self.publisher = Publisher(
            address, passwords, self._on_ack, max_inflight=1000, client_prefix=f"load-{manifest.stem}", stop=self._halt
        )

    def _on_ack(self, token: tuple[str, int, str], failure: str | None) -> None:
        sensor_id, ts, category = token  # the token carries the reading's ts, the tally wants its hour
        self.tally.ack((sensor_id, ts // HOUR_MS, category), failure)
        if failure is None:
            self.acks.append(Ack(time.monotonic(), sensor_id, ts, category))

    def run(self) -> None:
        self.started_ms = int(time.time() * 1000)
        self.plan = dataclasses.replace(self.plan, wall_origin_ms=self.started_ms)
        messages: Iterable[Message] = self.simulation.messages()
        if self.reorder is not None:  # due one after the other at `rate`
            step_ms = 1000 * self.plan.speed / self.rate
            messages = [
                m._replace(emit_ms=self.plan.start_ms + n * step_ms) for n, m in enumerate(self.reorder(list(messages)))
            ]
        try:
            with self.publisher:
                for sent, message in enumerate(messages, 1):
                    due = self.plan.wall_ms(message.emit_ms) / 1000
                    while (delay := due - time.time()) > 0 and not self._halt.is_set():
                        self.publisher.poll(min(delay, 0.05))
                    token = (message.sensor_id, message.ts, message.category)
                    if self._halt.is_set() or not self.publisher.publish(
                        message.account, message.topic, message.payload, token
                    ):
                        break
                    if sent % 32 == 0:
                        self.publisher.poll(0)
                left = self.publisher.flush(60)
            self.tally.lost((s, ts // HOUR_MS, c) for s, ts, c in left)
        except BaseException as err:
            self.error = err

    def stop(self) -> None:
        self._halt.set()

    def finish(self, timeout_s: float = 120) -> None:
        """Wait for the end of the run (or of `stop()`), then write the manifest."""
        self.join(timeout_s)
        assert not self.is_alive(), f"{self.name} did not finish within {timeout_s} s"
        if self.error is not None:
            raise self.error
        run = {
            "mode": "replay",
            "started_at": iso(self.started_ms),
            "finished_at": iso(time.time() * 1000 + 1000),
            "from": iso(self.plan.start_ms),
            "to": iso(self.end_ms),
            "seed": self.plan.seed,
            "sensors": len(self.simulation.info),
        }
        write_manifest(self.manifest_path, self.tally.manifest(run, self.simulation.silent))

    # -- what was acknowledged when ----------------------------------------------------------

    @property
    def published(self) -> int:
        return len(self.acks)

    def published_between(self, start: float, end: float) -> int:
        return sum(1 for a in list(self.acks) if start <= a.at <= end)

    def stored_keys_due(self, before: float) -> set[tuple[str, int]]:
        """(sensor_id, ts) of the readings acknowledged by the broker before `before` that must be stored."""
        return {(a.sensor_id, a.ts) for a in list(self.acks) if a.at <= before and a.category in (*STORED, DUPLICATE)}


# -- faults ---------------------------------------------------------------------------------------


@dataclass
class FaultRun:
    started: float
    ended: float = 0.0
    in_flight: int = 0
    recovery_s: float = 0.0


@dataclass
class Faults:
    """The faults of one scenario: when each began and ended, what was published meanwhile, recovery."""

    runs: list[FaultRun] = field(default_factory=list)

    def begin(self) -> FaultRun:
        run = FaultRun(time.monotonic())
        self.runs.append(run)
        return run

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.runs)

    @property
    def recovery(self) -> list[float]:
        return [r.recovery_s for r in self.runs]


def end_fault(run: FaultRun, load: Load, stack: StackHandle, timeout_s: float = 90) -> None:
    """The fault is over now: count what was published during it, then time until all of it is stored."""
    run.ended = time.monotonic()
    run.in_flight = load.published_between(run.started, run.ended)
    due = load.stored_keys_due(run.ended)
    run.recovery_s = wait_stored(stack, load, due, timeout_s) - run.ended


def wait_stored(stack: StackHandle, load: Load, keys: set[tuple[str, int]], timeout_s: float) -> float:
    """Until InfluxDB holds every (sensor_id, ts) of `keys`; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = keys - stored_keys(stack, load.kinds, load.start_ms, load.end_ms)
        now = time.monotonic()
        if not missing:
            return now
        if now > deadline:
            raise AssertionError(f"{len(missing)} of {len(keys)} readings not in InfluxDB after {timeout_s} s")
        time.sleep(0.2)


# -- InfluxDB -------------------------------------------------------------------------------------


def influxql(stack: StackHandle, statement: str, db: str = DB) -> list[dict[str, Any]]:
    """The series of one InfluxQL statement, as admin over plain HTTP, times in epoch ms."""
    body = urllib.parse.urlencode({"q": statement, "db": db, "epoch": "ms"}).encode()
    request = urllib.request.Request(f"{stack.influx_url}/query", data=body, method="POST")
    request.add_header("Authorization", basic_auth(INFLUX_ADMIN, stack.influx_admin_password))
    with urllib.request.urlopen(request, timeout=30) as resp:
        result = json.loads(resp.read())["results"][0]
    assert "error" not in result, f"{statement}: {result['error']}"
    assert not result.get("partial"), f"{statement}: InfluxDB truncated the result"
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def rows(series: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for values in series.get("values", []):
        yield {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}


def stored_keys(stack: StackHandle, kinds: Sequence[str], start_ms: int, end_ms: int) -> set[tuple[str, int]]:
    keys: set[tuple[str, int]] = set()
    for kind in kinds:
        for series in influxql(stack, f'SELECT * FROM "raw"."{kind}" WHERE time >= {start_ms}ms AND time < {end_ms}ms'):
            keys.update((row["sensor_id"], row["time"]) for row in rows(series))
    return keys


class WriteCounter:
    """Raw points InfluxDB was sent (its shard counters), kept across restarts of InfluxDB."""

    def __init__(self, stack: StackHandle) -> None:
        self.stack = stack
        self.before_restarts = 0

    def current(self) -> int:
        total = 0
        for series in influxql(self.stack, "SHOW STATS FOR 'shard'"):
            tags = series.get("tags", {})
            if tags.get("database") == DB and tags.get("retentionPolicy") == "raw":
                total += sum(row["writePointsOk"] for row in rows(series))
        return total

    def restarting(self) -> None:
        """Call just before InfluxDB stops: its counters start again from 0."""
        self.before_restarts += self.current()

    def duplicates(self) -> int:
        """Raw points written more than once: points sent minus distinct points (readings and self-metrics)."""
        sent = self.before_restarts + self.current()
        distinct = 0
        for measurement in influxql(self.stack, 'SHOW MEASUREMENTS ON "smartcity"'):
            for (name,) in measurement["values"]:
                points = influxql(self.stack, f'SELECT * FROM "raw"."{name}"')
                distinct += sum(len(s["values"]) for s in points)
        return sent - distinct


def dump(
    stack: StackHandle,
    db: str = DB,
    rp: str = "raw",
    skip: Sequence[str] = SELF_MEASUREMENTS,
    between: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Everything InfluxDB holds in `rp` (with times in `between`, ms), canonically: schema and every point."""
    where = f" WHERE time >= {between[0]}ms AND time < {between[1]}ms" if between else ""
    result: dict[str, Any] = {}
    for measurement in influxql(stack, f'SHOW MEASUREMENTS ON "{db}"', db):
        for (name,) in measurement["values"]:
            points = influxql(stack, f'SELECT * FROM "{rp}"."{name}"{where}', db)
            if name in skip or not points:
                continue
            fields = influxql(stack, f'SHOW FIELD KEYS ON "{db}" FROM "{rp}"."{name}"', db)
            tags = influxql(stack, f'SHOW TAG KEYS ON "{db}" FROM "{rp}"."{name}"', db)
            result[name] = {
                "fields": sorted(map(tuple, fields[0]["values"])) if fields else [],
                "tags": sorted(v[0] for v in tags[0]["values"]) if tags else [],
                "points": sorted(json.dumps(r, sort_keys=True) for s in points for r in rows(s)),
            }
    return result


def balanced_audit(
    stack: StackHandle, home: Path, manifests: Sequence[Path], registry: Registry, spool: Path | None = None
) -> AuditResult:
    """`deploy.audit`: published = stored + rejected, per vendor, sensor and hour; fails with what differs."""
    settings = InfluxSettings.from_env(stack.env(home=home))
    result = audit([load_manifest(p) for p in manifests], settings, registry, spool or home / "spool")
    total = result.total()
    assert result.balanced, f"audit not balanced: {result.problems[:10]}"
    assert total.expected > 0 and total.missing == 0 and total.extra == 0
    return result


# -- processes and the spool ----------------------------------------------------------------------


class SmartcityProcess(IngestProcess):
    """Any `smartcity` subcommand as a real process, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 - the process owns it until it ends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "-v", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def corrupt_lines(spool: Path) -> list[str]:
    """Lines of closed spool segments that do not verify (the spool must never hold any)."""
    bad = []
    for segment in sorted(spool.glob("*/*.seg")):
        bad += [f"{segment}:{n}" for n, line in enumerate(iter_lines(segment), 1) if not verify_line(line)]
    return bad


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[bool]:
    """A small tmpfs at `path` (True), or just the folder (False) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(path)], check=False)


def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    wait_until(predicate, timeout_s, what, interval_s=0.1)


def differences(left: dict[str, Any], right: dict[str, Any], limit: int = 3) -> str:
    """What differs between two dumps, briefly: measurements, schema, and a few points on each side."""
    out = []
    for name in sorted(set(left) | set(right)):
        a, b = left.get(name), right.get(name)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"{name}: only in the {'right' if a is None else 'left'} dump")
            continue
        for key in ("fields", "tags"):
            if a[key] != b[key]:
                out.append(f"{name} {key}: {a[key]} != {b[key]}")
        only_a, only_b = sorted(set(a["points"]) - set(b["points"])), sorted(set(b["points"]) - set(a["points"]))
        out.append(f"{name}: {len(only_a)} points only left, e.g. {only_a[:limit]}")
        out.append(f"{name}: {len(only_b)} points only right, e.g. {only_b[:limit]}")
    return "\n".join(out)
