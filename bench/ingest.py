"""Ingest benchmarks on a local stack of its own (real Mosquitto and InfluxDB on free ports).

1. Drain: `--messages` QoS 1 messages are published into a persistent session
   while its consumer is offline, then the consumer starts and the drain is
   timed from the first message it handles to the last. Consumers, in one run:
   `mosquitto_sub` to /dev/null (the ceiling), `smartcity ingest` with both
   loops, `--role consume` alone, and two `--role all` processes that split
   the topic tree by city. For ingest the time is the time until every
   reading is fsync'd in the spool (and so acknowledged).
2. Live: `--rate` msg/s for `--live-s` seconds into one `smartcity ingest`.
   Latency from publish to the reading in the spool, and to the point in
   InfluxDB, p50 and p99. The spool is tailed every 10 ms and InfluxDB polled
   every 50 ms, so both are upper bounds by that much.
3. RSS: peak resident memory (VmHWM) of each ingest process.

    .venv/bin/python -m bench.ingest                      # 100,000 messages, 30 s at 2,000 msg/s
    .venv/bin/python -m bench.ingest --messages 20000 --live-s 10
    .venv/bin/python -m bench.ingest --only live --live-s 60

Targets (docs/benchmarks.md): >= 20,000 msg/s per process, p99 publish-to-InfluxDB
<= 2 s at 2,000 msg/s, RSS <= 300 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.broker_auth import INGEST_USER
from deploy.servers import basic_auth, find_binary, free_port
from deploy.stack import INFLUX_ADMIN, Stack
from sensors.registry import Registry, Sensor, default_registry

WINDOW = 5000


class Bench:
    """A stack of its own in `workdir`, with broker accounts for the vendors of `registry` (default: built-in)."""

    def __init__(self, workdir: Path, registry: Registry | None = None) -> None:
        self.workdir = workdir
        self.stack = Stack(workdir / "stack")
        registry = registry or default_registry()
        self.ports = self.stack.up(
            mqtt_port=free_port(), influx_port=free_port(), mqtt_tls_port=free_port(), registry=registry
        )
        self.env_base = dict(os.environ)
        for line in self.stack.env_path.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if line.startswith("export "):
                self.env_base[key] = value.strip("'")
        self.env_base["PATH"] = f"{Path(sys.executable).parent}:{self.env_base.get('PATH', '')}"
        self.admin_password = self.stack.mqtt_passwords()["admin"]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sensors: list[Sensor] = list(registry.sensors.values())
        kinds = registry.kinds
        self.values = {
            s.id: {m.name: round(m.min + (m.max - m.min) / 3, 2) for m in kinds[s.kind].metrics} for s in self.sensors
        }

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.stack.down()

    # -- MQTT -------------------------------------------------------------------------------

    def client(self, client_id: str = "") -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.username_pw_set("admin", self.admin_password)
        connected = threading.Event()
        client.on_connect = lambda *_: connected.set()
        client.connect("127.0.0.1", self.ports.mqtt)
        client.loop_start()
        if not connected.wait(10):
            raise SystemExit("bench: cannot connect to the broker")
        return client

    def payload(self, i: int, ts: int) -> tuple[str, bytes, Sensor]:
        sensor = self.sensors[i % len(self.sensors)]
        return sensor.topic, json.dumps({"ts": ts, "values": self.values[sensor.id], "seq": i}).encode(), sensor

    def publish(self, count: int, rate: float | None = None, on_sent: Callable[[str, int, float], None] | None = None):
        """Publish `count` messages at QoS 1 (at `rate` msg/s, else as fast as the broker takes them)."""
        client = self.client()
        cond = threading.Condition()
        outstanding = [0]

        def on_publish(*_: Any) -> None:
            with cond:
                outstanding[0] -= 1
                cond.notify_all()

        client.on_publish = on_publish
        start = time.time()
        base_ts = int(start * 1000) - 3_600_000 if rate is None else 0
        for i in range(count):
            if rate:
                delay = start + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            now = time.time()
            ts = base_ts + i if rate is None else int(now * 1000)
            topic, body, sensor = self.payload(i, ts)
            with cond:
                cond.wait_for(lambda: outstanding[0] < WINDOW)
                outstanding[0] += 1
            client.publish(topic, body, qos=1)
            if on_sent is not None:
                on_sent(sensor.id, ts, now)
        with cond:
            cond.wait_for(lambda: outstanding[0] == 0, timeout=120)
        client.disconnect()
        client.loop_stop()
        return count / (time.time() - start)

    # -- processes --------------------------------------------------------------------------

    def ingest(self, home: Path, log: Path, **settings: Any) -> subprocess.Popen[bytes]:
        env = dict(self.env_base)
        env["SMARTCITY_HOME"] = str(home)
        env["SMARTCITY_INGEST_METRICS_INTERVAL_S"] = "10"
        for key, value in settings.items():  # mqtt_url, mqtt_ca_file: the connection; the rest [ingest] keys
            section = "" if key.startswith("mqtt_") else "INGEST_"
            env[f"SMARTCITY_{section}{key.upper()}"] = str(value)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "deploy.cli", "-v", "ingest", "--quiet"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,
            )
        self.procs.append(proc)
        return proc

    def tls_settings(self) -> dict[str, str]:
        """Settings that make an ingest process connect as vendors do, over TLS (the stack's CA), not loopback 1883."""
        password = urllib.parse.quote(self.stack.mqtt_passwords()[INGEST_USER], safe="")
        return {
            "mqtt_url": f"mqtts://{INGEST_USER}:{password}@localhost:{self.ports.mqtt_tls}",
            "mqtt_ca_file": str(self.stack.tls_files.ca_cert),
        }

    def make_session(self, home: Path, **settings: Any) -> None:
        """Run ingest until it has subscribed, so the broker keeps a session for it."""
        log = self.workdir / f"session-{settings['client_id']}.log"
        proc = self.ingest(home, log, **settings)
        wait_for(lambda: "subscribed to" in log.read_text(), 30, "ingest to subscribe")
        stop(proc)


class SpoolCounter:
    """Counts the records appended to the readings segments under a spool (reads only new bytes)."""

    def __init__(self, root: Path, parse: bool = False) -> None:
        self.root = root
        self.parse = parse
        self.offsets: dict[str, int] = {}
        self.count = 0
        self.seen: dict[tuple[str, int], float] = {}

    def poll(self) -> int:
        now = time.time()
        for segment in self.root.glob("*/readings-*"):
            if segment.name.endswith(".json"):
                continue
            key = f"{segment.parent.name}/{segment.name.split('.')[0]}"
            try:
                with open(segment, "rb") as handle:
                    handle.seek(self.offsets.get(key, 0))
                    data = handle.read()
            except FileNotFoundError:
                continue  # renamed from .open to .seg meanwhile: read on the next poll
            end = data.rfind(b"\n") + 1
            self.offsets[key] = self.offsets.get(key, 0) + end
            lines = data[:end].splitlines()
            self.count += len(lines)
            if self.parse:
                for line in lines:
                    record = json.loads(line[9:])
                    self.seen.setdefault((record["sensor_id"], record["ts"]), now)
        return self.count


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(interval_s)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    if proc.wait(30) != 0:
        raise SystemExit(f"bench: ingest exited with {proc.returncode}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def drain_ingest(bench: Bench, name: str, count: int, processes: list[dict[str, Any]]) -> dict[str, Any]:
    home = bench.workdir / name
    for settings in processes:
        bench.make_session(home, **settings)
    published = bench.publish(count)
    counter = SpoolCounter(home / "spool")
    base = counter.poll()
    procs = [bench.ingest(home, bench.workdir / f"{name}-{i}.log", **s) for i, s in enumerate(processes)]
    wait_for(lambda: counter.poll() > base, 60, "the first record", interval_s=0.002)
    first = time.monotonic()
    wait_for(lambda: counter.poll() >= base + count, 300, f"{count} records", interval_s=0.02)
    elapsed = time.monotonic() - first
    rss = [peak_rss_mib(p.pid) for p in procs]
    for proc in procs:
        stop(proc)
    return {"consumer": name, "processes": len(procs), "published_per_s": published,
            "drain_per_s": count / elapsed, "rss_mib": max(rss)}  # fmt: skip


def drain_mosquitto_sub(bench: Bench, count: int) -> dict[str, Any]:
    base = [find_binary("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(bench.ports.mqtt), "-u", "admin",
            "-P", bench.admin_password, "-V", "mqttv311", "-c", "-i", "bench-sub", "-q", "1",
            "-t", "smartcity/v1/#"]  # fmt: skip
    subprocess.run([*base, "-E"], check=True, timeout=30)
    published = bench.publish(count)
    started = time.monotonic()
    subprocess.run([*base, "-C", str(count)], check=True, timeout=600, stdout=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    return {"consumer": "mosquitto_sub > /dev/null", "processes": 1, "published_per_s": published,
            "drain_per_s": count / elapsed, "rss_mib": None}  # fmt: skip


def influx_points_since(bench: Bench, kind: str, since_ms: int) -> list[tuple[str, int]]:
    params = urllib.parse.urlencode(
        {
            "q": f'SELECT pm25, sensor_id FROM "raw"."{kind}" WHERE time > {since_ms}ms',
            "db": "smartcity",
            "epoch": "ms",
        }
    ).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{bench.ports.influx}/query", data=params, method="POST")
    request.add_header("Authorization", basic_auth(INFLUX_ADMIN, bench.stack.influx_admin_password()))
    with urllib.request.urlopen(request, timeout=10) as resp:
        result = json.loads(resp.read())
    series = result["results"][0].get("series", [])
    return [(row[2], row[0]) for s in series for row in s["values"]]


def live_latency(bench: Bench, rate: float, seconds: float) -> dict[str, Any]:
    home = bench.workdir / "live"
    proc = bench.ingest(home, bench.workdir / "live.log", client_id="bench-live")
    log = bench.workdir / "live.log"
    wait_for(lambda: "subscribed to" in log.read_text(), 30, "ingest to subscribe")
    sent: dict[tuple[str, int], float] = {}
    in_influx: dict[tuple[str, int], float] = {}
    spool = SpoolCounter(home / "spool", parse=True)
    done = threading.Event()

    def watch() -> None:
        since = int(time.time() * 1000) - 1000
        next_influx = 0.0
        while not done.is_set():
            spool.poll()
            now = time.time()
            if now >= next_influx:
                next_influx = now + 0.05
                for key in influx_points_since(bench, "air_quality", since):
                    in_influx.setdefault(key, now)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    count = int(rate * seconds)
    achieved = bench.publish(count, rate=rate, on_sent=lambda sensor, ts, at: sent.__setitem__((sensor, ts), at))
    probes = {key for key in sent if key[0].split("-")[1] == "aq"}  # air-quality sensors: `{city}-aq-{n}`
    wait_for(lambda: probes <= in_influx.keys(), 60, "the last points in InfluxDB", interval_s=0.1)
    done.set()
    watcher.join()
    rss = peak_rss_mib(proc.pid)
    stop(proc)
    to_spool = sorted(spool.seen[k] - sent[k] for k in sent if k in spool.seen)
    to_influx = sorted(in_influx[k] - sent[k] for k in probes)
    return {
        "rate": achieved,
        "messages": count,
        "spool_p50_ms": 1000 * statistics.median(to_spool),
        "spool_p99_ms": 1000 * to_spool[int(0.99 * (len(to_spool) - 1))],
        "influx_p50_ms": 1000 * statistics.median(to_influx),
        "influx_p99_ms": 1000 * to_influx[int(0.99 * (len(to_influx) - 1))],
        "influx_probes": len(to_influx),
        "rss_mib": rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per drain (default 100,000)")
    parser.add_argument("--rate", type=float, default=2000, help="live rate in msg/s (default 2,000)")
    parser.add_argument("--live-s", type=float, default=30, help="live run length in seconds (default 30)")
    parser.add_argument("--only", choices=("drain", "live"), help="run one part only")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, spool)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="smartcity-bench-ingest-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanup below
    bench = Bench(workdir)
    try:
        n = args.messages
        drains = []
        if args.only in (None, "drain"):
            drains = [
                drain_mosquitto_sub(bench, n),
                drain_ingest(bench, "ingest --role all", n, [{"client_id": "bench-all"}]),
                drain_ingest(bench, "ingest --role consume", n, [{"client_id": "bench-consume", "role": "consume"}]),
                drain_ingest(
                    bench,
                    "ingest --role all, 2 processes by city",
                    n,
                    [
                        {"client_id": "bench-phuket", "topics": "smartcity/v1/phuket/#"},
                        {"client_id": "bench-chiang-mai", "topics": "smartcity/v1/chiang-mai/#"},
                    ],
                ),
            ]
        live = live_latency(bench, args.rate, args.live_s) if args.only in (None, "live") else None
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if drains:
        print(f"\nDrain of {args.messages:,} queued QoS 1 messages (CPU: {os.cpu_count()} cores, shared)\n")
        print("| consumer | processes | drain msg/s | per process | peak RSS MiB |")
        print("|---|---|---|---|---|")
        for d in drains:
            rss = f"{d['rss_mib']:.0f}" if d["rss_mib"] is not None else "-"
            print(f"| {d['consumer']} | {d['processes']} | {d['drain_per_s']:,.0f} | "
                  f"{d['drain_per_s'] / d['processes']:,.0f} | {rss} |")  # fmt: skip
    if live:
        print(
            f"\nLive: {live['messages']:,} messages at {live['rate']:,.0f} msg/s into `smartcity ingest` (role all)\n"
        )
        print("| path | p50 ms | p99 ms |")
        print("|---|---|---|")
        print(f"| publish -> spool (fsync'd) | {live['spool_p50_ms']:.0f} | {live['spool_p99_ms']:.0f} |")
        print(f"| publish -> InfluxDB ({live['influx_probes']:,} air-quality points) | {live['influx_p50_ms']:.0f} | "
              f"{live['influx_p99_ms']:.0f} |")  # fmt: skip
        print(f"\npeak RSS of the live ingest process: {live['rss_mib']:.0f} MiB")
    if args.keep:
        print(f"work folder: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
