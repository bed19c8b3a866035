"""The consumers `bench/compare.py` runs side by side (`smartcity ingest` setups, the Node-RED flow),
the CPU and memory of their processes, and what each stored in InfluxDB."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.ingest import Bench, stop, wait_for
from deploy.broker_auth import INGEST_USER
from deploy.servers import free_port
from deploy.stack import INFLUX_ADMIN
from sensors.errors import SmartcityError
from sensors.registry import Registry
from storage.bootstrap import bootstrap
from storage.query import QueryClient, ident, parse_results, render
from storage.settings import InfluxSettings

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "bench" / "peer"
READY_POLL_S = 0.01  # the consumer's log is watched this often for its "connected" line
NODE_MIN = (18, 5)  # Node-RED 4's `engines`
CLK_TCK = os.sysconf("SC_CLK_TCK")

Key = tuple[str, int]  # a reading's identity: (sensor_id, ts in ms)
console = Console(stderr=True, highlight=False)


class BenchError(SmartcityError):
    """The bench cannot run here (a missing tool, a consumer that does not start); the message says what."""


# -- processes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    rss_mib: float


def process_tree(pids: Sequence[int]) -> list[int]:
    """`pids` and all their descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def usage(pids: Sequence[int]) -> Usage:
    """CPU seconds (user + system) and the sum of peak RSS (VmHWM) of the processes and their descendants."""
    cpu = rss_kib = 0.0
    for pid in process_tree(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        peak = re.search(r"^VmHWM:\s+(\d+)", status, re.M)  # absent once a process is a zombie
        rss_kib += int(peak.group(1)) if peak else 0
    return Usage(cpu, rss_kib / 1024)


class Consumer(ABC):
    """Something subscribed to the sensor topics that writes to InfluxDB (one or more processes)."""

    label: str
    processes: int
    db: str
    client_ids: list[str]  # the broker sessions it uses

    @abstractmethod
    def prepare(self) -> None:
        """Subscribe once with the run's client id, so the broker keeps a session, then go offline."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def wait_ready(self) -> None: ...

    @abstractmethod
    def pids(self) -> list[int]: ...

    @abstractmethod
    def stop(self) -> None: ...


class Ingest(Consumer):
    """`smartcity ingest` processes sharing one home: each a dict of SMARTCITY_INGEST_* settings (client_id, ...)."""

    def __init__(self, bench: Bench, label: str, db: str, processes: Sequence[dict[str, str]]) -> None:
        self.bench, self.label, self.db, self.settings = bench, label, db, processes
        self.processes = len(processes)
        self.home = bench.workdir / processes[0]["client_id"]
        self.procs: list[subprocess.Popen[bytes]] = []
        # `--role write` processes do not subscribe: they follow the spool the others write.
        self.subscribers = [p for p in processes if p.get("role", "all") != "write"]
        self.client_ids = [p["client_id"] for p in self.subscribers]

    def _use_db(self) -> None:
        self.bench.env_base["SMARTCITY_INFLUX_DB"] = self.db

    def prepare(self) -> None:
        self._use_db()
        for settings in self.subscribers:
            self.bench.make_session(self.home, **settings)

    def _log(self, settings: dict[str, str]) -> Path:
        return self.bench.workdir / f"{settings['client_id']}.log"

    def start(self) -> None:
        self._use_db()
        self.procs = [self.bench.ingest(self.home, self._log(s), **s) for s in self.settings]

    def wait_ready(self) -> None:
        logs = [self._log(s) for s in self.subscribers]
        subscribed = lambda: all("subscribing to" in log.read_text() for log in logs)  # noqa: E731
        wait_for(subscribed, 60, f"{self.label} to subscribe", interval_s=READY_POLL_S)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.procs = []


class NodeRed(Consumer):
    """The flow of bench/peer/flows.json in a Node-RED of its own (userDir in the work folder, a free port)."""

    processes = 1
    ready_line = "Connected to broker"

    def __init__(self, bench: Bench, node: str, label: str, db: str, client_id: str) -> None:
        self.bench, self.node, self.label, self.db, self.client_id = bench, node, label, db, client_id
        self.client_ids = [client_id]
        self.user_dir = bench.workdir / client_id
        self.log = self.user_dir / "node-red.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_from = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.user_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PEER / "flows.json", self.user_dir / "flows.json")
        secrets = self.bench.stack
        credentials = {
            "smartcity_broker": {"user": INGEST_USER, "password": secrets.mqtt_passwords()[INGEST_USER]},
            "smartcity_influxdb": {"username": INFLUX_ADMIN, "password": secrets.influx_admin_password()},
        }
        cred_path = self.user_dir / "flows_cred.json"
        cred_path.write_text(json.dumps(credentials))
        cred_path.chmod(0o600)
        env = {
            **os.environ,
            "SMARTCITY_BENCH_MQTT_PORT": str(self.bench.ports.mqtt),
            "SMARTCITY_BENCH_INFLUX_PORT": str(self.bench.ports.influx),
            "SMARTCITY_BENCH_INFLUX_DB": self.db,
            "SMARTCITY_BENCH_CLIENT_ID": self.client_id,
        }
        red = PEER / "node_modules" / "node-red" / "red.js"
        command = [self.node, str(red), "--settings", str(PEER / "settings.js"), "--userDir", str(self.user_dir)]
        self.log_from = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            return subprocess.Popen([*command, "--port", str(free_port())], env=env, stdout=out, stderr=out)

    def _logged(self) -> str:
        with open(self.log, "rb") as handle:
            handle.seek(self.log_from)
            return handle.read().decode("utf-8", "replace")

    def prepare(self) -> None:
        self.start()
        self.wait_ready()
        time.sleep(1.0)  # the SUBSCRIBE follows the CONNACK; Node-RED does not log its SUBACK
        self.stop()

    def start(self) -> None:
        self.proc = self._spawn()

    def wait_ready(self) -> None:
        def ready() -> bool:
            logged = self._logged()
            if self.proc is not None and self.proc.poll() is not None:
                tail = logged.strip().splitlines()[-3:]
                raise BenchError(f"Node-RED exited with {self.proc.returncode}: {' | '.join(tail)}")
            errors = [line for line in logged.splitlines() if " - [error] " in line]
            if errors:  # e.g. a node of the flow that is not installed or not configured
                raise BenchError(f"Node-RED: {errors[0].split(' - ', 1)[1]} (log: {self.log})")
            return self.ready_line in logged

        wait_for(ready, 60, "Node-RED to connect to the broker", interval_s=READY_POLL_S)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def install_node_red() -> str:
    """`npm ci` in bench/peer/ (from its package-lock.json) unless node_modules is already that; returns `node`."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise BenchError("node and npm are needed for the Node-RED peer: run 'make bench' or 'apt-get install npm'")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    if (major, minor) < NODE_MIN:
        raise BenchError(f"node {version} is too old for Node-RED 4 (needs >= {'.'.join(map(str, NODE_MIN))})")
    installed = PEER / "node_modules" / ".package-lock.json"  # npm's record of what node_modules holds
    if not installed.exists() or installed.stat().st_mtime < (PEER / "package-lock.json").stat().st_mtime:
        with console.status("npm ci: installing Node-RED into bench/peer/node_modules"):
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER, capture_output=True, text=True
            )
        if done.returncode:
            raise BenchError(f"npm ci in bench/peer failed: {done.stderr.strip()[-300:]}")
    return node


# -- InfluxDB --------------------------------------------------------------------------------------


class Points:
    """Counts and lists the raw points of one database (one field per kind: every point has all its metrics)."""

    def __init__(self, bench: Bench, registry: Registry, db: str) -> None:
        self.settings = InfluxSettings(
            url=f"http://127.0.0.1:{bench.ports.influx}",
            username=INFLUX_ADMIN,
            password=bench.stack.influx_admin_password(),
            db=db,
            timeout_s=600,
        )
        bootstrap(self.settings)
        self.client = QueryClient(self.settings)
        self.first_metric = {kind.id: kind.metrics[0].name for kind in registry.kinds.values()}

    def count(self) -> int:
        params: dict[str, object] = {}
        statements = []
        for i, (kind, metric) in enumerate(self.first_metric.items()):
            statements.append(f"SELECT count({{f{i}}}) FROM {{m{i}}}")
            params |= {f"f{i}": ident(metric), f"m{i}": ident(self.settings.raw_rp, kind)}
        return sum(int(row[1]) for s in self.client.query("; ".join(statements), params) for row in s.values)

    def present(self, readings: Sequence[tuple[str, Key]]) -> int:
        """How many of these readings are stored (point lookups by series and time: cheap at any size)."""
        params: dict[str, object] = {}
        statements = []
        for i, (kind, (sensor_id, ts)) in enumerate(readings):
            statements.append(f"SELECT {{f{i}}} FROM {{m{i}}} WHERE {{tag}} = {{s{i}}} AND time = {{t{i}}}ms")
            params |= {f"f{i}": ident(self.first_metric[kind]), f"m{i}": ident(self.settings.raw_rp, kind)}
            params |= {f"s{i}": sensor_id, f"t{i}": ts}
        return len(self.client.query("; ".join(statements), {**params, "tag": ident("sensor_id")}))

    def keys(self, kind: str | None = None, since_ms: int | None = None) -> set[Key]:
        """(sensor_id, ts) of the points (of `kind`, newer than `since_ms`); fails on a truncated answer."""
        found: set[Key] = set()
        for name in [kind] if kind else list(self.first_metric):
            where = "" if since_ms is None else f" WHERE time > {since_ms}ms"
            statement = f'SELECT {{f}}, "sensor_id" FROM {{m}}{where}'
            params: dict[str, object] = {"f": ident(self.first_metric[name]), "m": ident(self.settings.raw_rp, name)}
            found |= {(sensor, t // 1_000_000) for t, _, sensor in self._rows(statement, params)}
        return found

    def _rows(self, statement: str, params: dict[str, object]) -> list[tuple[Any, ...]]:
        payload = self.client.raw(render(statement, params))
        # A statement's `partial` means max-row-limit cut it; a series' `partial` is left over from the
        # 10,000-row chunks InfluxDB merges into one answer, and means nothing here.
        if any(result.get("partial") for result in payload["results"]):
            raise BenchError("InfluxDB cut a query answer short (max-row-limit); the lost/bad counts would be wrong")
        return [row for s in parse_results(payload, raw_times=True) for row in s.values]

    def drop(self) -> None:
        """Drop the database, so that every run meets InfluxDB in the same state."""
        self.client.execute("DROP DATABASE {db}", {"db": ident(self.settings.db)}, db="")

    def close(self) -> None:
        self.client.close()
