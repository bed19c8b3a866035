"""Side by side: `smartcity ingest` and the Node-RED flow users would otherwise build: one machine, broker, stream.

Users who do not pick smartcity wire the broker to InfluxDB with a low-code
flow (bench/peer/: MQTT in -> JSON -> function -> batch -> InfluxDB). This
bench runs both in one run, on a local stack of its own (Mosquitto and
InfluxDB 1.x through `deploy.stack`, free ports, a temp dir), over one seeded
stream of simulator messages from the whole built-in fleet with about 2 % bad
payloads (`--faults`). Each consumer writes into a database of its own.

- Drain (throughput): the consumer subscribes once (persistent session, fixed
  client id) and goes offline; the stream is published into its session;
  the consumer starts again. The rate is the stream over the time from the
  consumer's "connected" log line to the last point visible in InfluxDB (the
  bench looks up the stream's last readings every 0.05 s; the start-up before
  the connection is shown apart). Consumers: `mosquitto_sub` to /dev/null
  (the broker's ceiling: no parsing, no database), `smartcity ingest` (1
  process; 2 that split the topic tree by city with --topics; `--role
  consume` + `--role write`; 1 process over TLS on the vendors' listener, for
  TLS's cost), and the Node-RED flow. `--rounds` rounds, each
  in a shuffled order; the table shows the round with the median rate.
- Live (latency): `--rate` msg/s for `--live-s` s into a running consumer
  (smartcity ingest plain and over TLS, the Node-RED flow);
  the time from publishing a reading to an InfluxDB query returning it, p50
  and p99, over the readings of the kind with the most readings (polled every
  0.1 s, so an upper bound by that much).
- For every run: CPU seconds (user + system of the process tree, from the
  connection to the last point), the CPU InfluxDB and Mosquitto spent, peak
  RSS (sum of VmHWM over the tree), readings lost
  (accepted readings expected minus distinct (sensor_id, ts) in InfluxDB) and
  bad payloads stored (distinct points no accepted reading explains).
- Rollups over the raw data of the 1-process drain: `smartcity pipeline
  rollup` (Beam, from the spool) against InfluxQL `SELECT mean, min, max,
  count INTO ... GROUP BY time(1m), *` (what a continuous query runs), for
  the sensor-level 1 m rollup alone and for every window and level Beam
  writes; wall time, and the sensor-level 1 m points compared one by one.

Prints markdown tables and rewrites the generated part of the "Peer
comparison" section of docs/benchmarks.md and docs/benchmarks-peer.png
(`--no-doc` leaves both alone).

EXAMPLES
    make bench                                   # 3 x 200,000 messages; 30 s at 2,000 msg/s
    .venv/bin/python -m bench.compare --messages 10000 --rounds 1 --live-s 10 --no-doc
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.ingest import Bench, peak_rss_mib
from bench.peer_consumers import (
    ROOT,
    BenchError,
    Consumer,
    Ingest,
    Key,
    NodeRed,
    Points,
    Usage,
    console,
    install_node_red,
    usage,
)
from bench.peer_report import DOC, PLOT, Row, fmt, machine, plot, report, versions, write_doc
from bench.peer_rollups import rollups
from deploy.broker_auth import INGEST_USER
from deploy.servers import find_binary
from sensors.broker_url import BrokerAddress
from sensors.errors import SmartcityError
from sensors.faults import parse_faults
from sensors.publisher import Publisher
from sensors.registry import Registry, default_registry
from sensors.simulator import (
    DUPLICATE,
    GOOD,
    HOUR_MS,
    STORED,
    Message,
    Plan,
    Simulation,
    Token,
    natural_rate,
    select_sensors,
)

# About 2 % of messages are bad payloads: twice the reject faults of `--faults default`, with its
# duplicates, late and out-of-order readings and silent sensors.
FAULTS = (
    "default,malformed_json=0.004,out_of_range=0.006,unit_mismatch=0.002,ts_in_future=0.002,"
    "ts_too_old=0.002,unknown_sensor=0.004"
)
ACCEPTED = (*STORED, DUPLICATE)  # categories the contract accepts; a duplicate is the same point again
COUNT_POLL_S = 0.25
TAIL_POLL_S = 0.05
TAIL_READINGS = 20
PROBE_POLL_S = 0.1
PROBE_WINDOW_MS = 3_000  # the probe query looks this far behind the newest point seen
SETTLE_S = 2.0  # a run is over once every expected point is in and the count has not moved for this long,
STALL_S = 30.0  # or the count has not moved for this long (points were lost)


# -- the stream ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    messages: list[Message]
    expected: frozenset[Key]  # accepted readings: each must become exactly one point
    bad: int  # messages the contract rejects

    @classmethod
    def of(cls, messages: list[Message]) -> Stream:
        expected = frozenset((m.sensor_id, m.ts) for m in messages if m.category in ACCEPTED)
        return cls(messages, expected, sum(m.category not in ACCEPTED for m in messages))

    def tail(self, count: int = TAIL_READINGS) -> list[tuple[str, Key]]:
        """(kind, key) of the last `count` accepted readings sent: the last ones a consumer stores."""
        last = [m for m in reversed(self.messages) if m.category in ACCEPTED][:count]
        return [(kind_of(m.topic), (m.sensor_id, m.ts)) for m in last]


def replay_stream(registry: Registry, n: int, faults: str, seed: int) -> Stream:
    """The first `n` messages of the whole fleet from the start of a UTC day, ending at least an hour ago."""
    sensors = select_sensors(registry)
    span_ms = math.ceil(n / natural_rate(registry, sensors) * 1000 * 1.1)  # silent sensors send nothing
    now = int(time.time() * 1000)
    start = (now - HOUR_MS - span_ms) // (24 * HOUR_MS) * (24 * HOUR_MS)  # the same stream all day
    plan = Plan(start, start + span_ms, seed, parse_faults(faults), wall_origin_ms=now, speed=math.inf)
    return Stream.of(list(itertools.islice(Simulation(registry, sensors, plan).messages(), n)))


def live_stream(registry: Registry, rate: float, seconds: float, faults: str, seed: int) -> tuple[Stream, Plan]:
    """`rate` readings/s of the whole fleet for `seconds`, starting a second from now, each due at its ts."""
    sensors = select_sensors(registry)
    start = int(time.time() * 1000) + 1000
    scale = rate / natural_rate(registry, sensors)
    plan = Plan(start, start + int(seconds * 1000), seed, parse_faults(faults), time_scale=scale)
    return Stream.of(list(Simulation(registry, sensors, plan).messages())), plan


def kind_of(topic: str) -> str:
    return topic.split("/")[3]  # smartcity/v1/{city}/{kind}/{sensor_id}


def publish(
    bench: Bench,
    messages: Sequence[Message],
    plan: Plan | None = None,
    on_sent: Callable[[Message], None] | None = None,
) -> float:
    """Publish at QoS 1 with each vendor's own account (`plan`: each message at its due time); returns msg/s."""
    passwords = bench.stack.mqtt_passwords()
    accounts = sorted({m.account for m in messages})
    refused: Counter[str] = Counter()

    def on_ack(token: Token, failure: str | None) -> None:
        if failure is not None:
            refused[failure] += 1

    address = BrokerAddress("127.0.0.1", bench.ports.mqtt, tls=False)
    started = time.perf_counter()
    with Publisher(address, {a: passwords[a] for a in accounts}, on_ack, client_prefix="bench-publish") as publisher:
        for i, message in enumerate(messages):
            if plan is not None:
                while (delay := plan.wall_ms(message.emit_ms) / 1000 - time.time()) > 0:
                    publisher.poll(min(delay, 0.05))
            publisher.publish(message.account, message.topic, message.payload, message.token)
            if on_sent is not None:
                on_sent(message)
            if i % 64 == 0:
                publisher.poll(0)
        unconfirmed = publisher.flush(120)
    if refused or unconfirmed:
        raise BenchError(f"the broker refused {dict(refused)} and did not confirm {len(unconfirmed)} publishes")
    return len(messages) / (time.perf_counter() - started)


def settle(points: Points, stream: Stream) -> float:
    """Wait for the last readings of the stream to be stored, then for the point count to stop moving.

    Returns the monotonic time the last point was seen. Counting every point costs InfluxDB tens
    of ms at 200k points, so until the stream's last readings are in, it only looks those up, and
    counts every 2 s to notice a consumer that stopped storing (then they never come).
    """
    tail = stream.tail()
    count, changed = 0, time.monotonic()
    next_count = changed
    while points.present(tail) < len(tail):
        time.sleep(TAIL_POLL_S)
        now = time.monotonic()
        if now >= next_count:
            next_count, current = now + 2.0, points.count()
            count, changed = (current, now) if current != count else (count, changed)
            if now - changed >= STALL_S:
                return changed
    last = time.monotonic()
    # Stragglers (batches written out of order) still move the count: wait until it is complete and still.
    count, changed = points.count(), last
    while True:
        time.sleep(COUNT_POLL_S)
        now, current = time.monotonic(), points.count()
        if current != count:
            count, changed = current, now
        elif (count >= len(stream.expected) and now - changed >= SETTLE_S) or now - changed >= STALL_S:
            return max(last, changed)


# -- runs ------------------------------------------------------------------------------------------


def forget_sessions(bench: Bench, client_ids: Sequence[str]) -> None:
    """Connect with a clean start as each client id: the broker drops its session and stops queueing for it.

    Otherwise every later run's messages would also be queued for the sessions of the earlier runs.
    """
    for client_id in client_ids:
        client = bench.client(client_id)
        client.disconnect()
        client.loop_stop()


def drain(bench: Bench, registry: Registry, consumer: Consumer, stream: Stream, keep: bool = False) -> Row:
    """One drain of `stream` through `consumer`; its database is dropped afterwards unless `keep`."""
    points = Points(bench, registry, consumer.db)
    consumer.prepare()
    publish(bench, stream.messages)
    spawned, servers = time.monotonic(), server_cpu(bench)
    consumer.start()
    try:
        consumer.wait_ready()  # connected: the broker starts handing out the queued session now
        connected, startup = time.monotonic(), usage(consumer.pids())
        last = settle(points, stream)
        used = usage(consumer.pids())
        used = Usage(used.cpu_s - startup.cpu_s, used.rss_mib)  # the drain's CPU, without the start-up's
        servers = since(servers, server_cpu(bench))
    finally:
        consumer.stop()
        forget_sessions(bench, consumer.client_ids)
    keys = points.keys()
    if not keep:
        points.drop()
    points.close()
    return Row(
        consumer.label,
        consumer.processes,
        len(stream.messages) / (last - connected),
        used.cpu_s,
        used.rss_mib,
        servers,
        startup_s=connected - spawned,
        lost=len(stream.expected - keys),
        bad_stored=len(keys - stream.expected),
    )


def drain_ceiling(bench: Bench, stream: Stream) -> Row:
    """`mosquitto_sub` to /dev/null from a persistent session: what the broker can hand out, with no work at all."""
    password = bench.stack.mqtt_passwords()[INGEST_USER]
    login = ["-h", "127.0.0.1", "-p", str(bench.ports.mqtt), "-u", INGEST_USER, "-P", password, "-V", "mqttv311"]
    session = ["-c", "-i", "bench-ceiling", "-q", "1", "-t", "smartcity/v1/#"]
    command = [find_binary("mosquitto_sub"), *login, *session]
    subprocess.run([*command, "-E"], check=True, timeout=30)
    publish(bench, stream.messages)
    started, servers = time.monotonic(), server_cpu(bench)
    proc = subprocess.Popen([*command, "-C", str(len(stream.messages))], stdout=subprocess.DEVNULL)
    deadline = started + 600
    rss_mib = 0.0
    while True:  # os.wait4 gives the child's own CPU time (its ru_maxrss would include the forked Python's)
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss_mib = peak_rss_mib(proc.pid) or rss_mib
        if time.monotonic() > deadline:
            proc.kill()
            raise BenchError("mosquitto_sub did not receive the whole stream within 600 s")
        time.sleep(0.005)
    elapsed, servers = time.monotonic() - started, since(servers, server_cpu(bench))
    forget_sessions(bench, ["bench-ceiling"])
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise BenchError(f"mosquitto_sub exited with {proc.returncode}")
    cpu = rusage.ru_utime + rusage.ru_stime
    return Row("mosquitto_sub > /dev/null (ceiling)", 1, len(stream.messages) / elapsed, cpu, rss_mib, servers)


class ProbeWatcher(threading.Thread):
    """Notes when each point of one kind first comes back from an InfluxDB query (polled every 0.1 s)."""

    def __init__(self, points: Points, kind: str, since_ms: int) -> None:
        super().__init__(daemon=True)
        self.points, self.kind, self.newest = points, kind, since_ms
        self.seen: dict[Key, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(PROBE_POLL_S):
            # Points arrive about in ts order: look a little behind the newest one seen, not at all of them.
            for key in self.points.keys(self.kind, since_ms=self.newest - PROBE_WINDOW_MS):
                if key not in self.seen:
                    self.seen[key] = time.time()
                    self.newest = max(self.newest, key[1])


def live(bench: Bench, registry: Registry, consumer: Consumer, args: argparse.Namespace) -> Row:
    points = Points(bench, registry, consumer.db)
    consumer.start()
    try:
        consumer.wait_ready()
        stream, plan = live_stream(registry, args.rate, args.live_s, args.faults, args.seed)
        probe_kind = Counter(kind_of(m.topic) for m in stream.messages if m.category == GOOD).most_common(1)[0][0]
        sent: dict[Key, float] = {}

        def on_sent(m: Message) -> None:
            if m.category == GOOD and kind_of(m.topic) == probe_kind:
                sent[(m.sensor_id, m.ts)] = time.time()

        watcher = ProbeWatcher(points, probe_kind, plan.start_ms - 1000)
        watcher.start()
        servers = server_cpu(bench)
        publish(bench, stream.messages, plan, on_sent)
        deadline = time.monotonic() + 60
        while not sent.keys() <= watcher.seen.keys() and time.monotonic() < deadline:
            time.sleep(0.1)
        watcher.done.set()
        watcher.join()
        settle(points, stream)
        used = usage(consumer.pids())
        servers = since(servers, server_cpu(bench))
    finally:
        consumer.stop()
        forget_sessions(bench, consumer.client_ids)
    keys = points.keys()
    points.close()
    latencies = sorted(watcher.seen[k] - sent[k] for k in sent if k in watcher.seen)
    if not latencies:
        raise BenchError(f"{consumer.label}: no probe reading reached InfluxDB")
    return Row(
        consumer.label,
        consumer.processes,
        len(stream.messages) / args.live_s,
        used.cpu_s,
        used.rss_mib,
        servers,
        lost=len(stream.expected - keys),
        bad_stored=len(keys - stream.expected),
        probes=len(latencies),
        probes_sent=len(sent),
        p50_ms=1000 * statistics.median(latencies),
        p99_ms=1000 * latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)],
    )


def server_cpu(bench: Bench) -> tuple[float, float]:
    """CPU seconds InfluxDB and Mosquitto have used so far."""
    servers = (bench.stack.influxdb(bench.ports), bench.stack.mosquitto(bench.ports))
    pids = [server.running_pid() for server in servers]
    if None in pids:
        raise BenchError("InfluxDB or Mosquitto is no longer running")
    influx, broker = (usage([pid]).cpu_s for pid in pids if pid)
    return influx, broker


def since(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def wait_idle(bench: Bench, timeout_s: float = 60.0) -> None:
    """Let the servers finish the last run's background work (InfluxDB compactions) before the next run starts."""
    deadline = time.monotonic() + timeout_s
    before = sum(server_cpu(bench))
    while time.monotonic() < deadline:
        time.sleep(1.0)
        after = sum(server_cpu(bench))
        if after - before < 0.05:  # under 5 % of a core for a second
            return
        before = after


# -- main ------------------------------------------------------------------------------------------


# The default process again, connected as vendors are (MQTT over TLS on the vendors' listener): TLS's cost.
TLS_LABEL = "smartcity ingest, over TLS"
PAHO_LABEL = "smartcity ingest, paho's own client (fast_client = false)"


def drain_setups(bench: Bench, registry: Registry, node: str, round_no: int) -> list[Consumer]:
    """The consumers of one drain round: client ids and databases carry the round, so each run starts empty."""
    r = f"r{round_no}"
    by_city = [{"client_id": f"bench-{c}-{r}", "topics": f"smartcity/v1/{c}/#"} for c in sorted(registry.cities)]
    split = [{"client_id": f"bench-consume-{r}", "role": "consume"}, {"client_id": f"bench-write-{r}", "role": "write"}]
    return [
        Ingest(bench, "smartcity ingest", f"drain_ingest_{r}", [{"client_id": f"bench-ingest-{r}"}]),
        NodeRed(bench, node, "Node-RED flow", f"drain_nodered_{r}", f"bench-nodered-{r}"),
        Ingest(bench, "smartcity ingest, 1 process per city", f"drain_cities_{r}", by_city),
        Ingest(bench, "smartcity ingest, --role consume + --role write", f"drain_split_{r}", split),
        Ingest(bench, TLS_LABEL, f"drain_tls_{r}", [{"client_id": f"bench-tls-{r}", **bench.tls_settings()}]),
        # The fallback when paho's internals moved (ingest/fastpaho.py): what the fast client is worth.
        Ingest(bench, PAHO_LABEL, f"drain_paho_{r}", [{"client_id": f"bench-paho-{r}", "fast_client": "false"}]),
    ]


def median_row(rows: list[Row]) -> Row:
    """The round with the median rate, carrying every round's rate and the worst round's lost and bad counts."""
    middle = sorted(rows, key=lambda r: r.rate)[(len(rows) - 1) // 2]

    def worst(values: list[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    return dataclasses.replace(
        middle,
        rounds=tuple(r.rate for r in rows),
        lost=worst([r.lost for r in rows]),
        bad_stored=worst([r.bad_stored for r in rows]),
    )


def run(args: argparse.Namespace, command: str) -> int:
    began = time.monotonic()
    node = install_node_red()
    load_before = "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    registry = default_registry()
    with console.status(f"generating {args.messages:,} messages"):
        stream = replay_stream(registry, args.messages, args.faults, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="smartcity-bench-compare-"))
    with console.status("starting Mosquitto and InfluxDB"):
        bench = Bench(workdir)
    try:
        ceiling = "mosquitto_sub > /dev/null (ceiling)"
        runs: dict[str, list[Row]] = {}
        rollup_source: Ingest | None = None
        for round_no in range(1, args.rounds + 1):
            setups = drain_setups(bench, registry, node, round_no)
            # The first round's 1-process ingest keeps its database: the rollups run over it.
            steps = [
                (c.label, functools.partial(drain, bench, registry, c, stream, keep=c is setups[0] and round_no == 1))
                for c in setups
            ]
            if round_no == 1:  # the broker's ceiling is a reference, far off the others: once is enough
                steps.insert(0, (ceiling, functools.partial(drain_ceiling, bench, stream)))
            for label, _ in steps:
                runs.setdefault(label, [])  # the table keeps this order
            # A shuffled order per round, so that load from elsewhere and InfluxDB's background work hit all alike.
            random.Random(args.seed + round_no).shuffle(steps)
            for label, step in steps:
                step_began = time.monotonic()
                with console.status(f"drain, round {round_no} of {args.rounds}: {label}"):
                    wait_idle(bench)
                    row = step()
                runs[label].append(row)
                took = time.monotonic() - step_began
                console.print(
                    f"drain {round_no}/{args.rounds} {label}: {row.rate:,.0f} msg/s, lost {fmt(row.lost)}, "
                    f"bad stored {fmt(row.bad_stored)}, RSS {row.rss_mib:.0f} MiB ({took:.0f} s)"
                )
            if rollup_source is None and isinstance(setups[0], Ingest):
                rollup_source = setups[0]
        drains = [median_row(rows) for rows in runs.values()]
        assert rollup_source is not None
        with console.status("rollups: Beam, then InfluxQL INTO"):
            wait_idle(bench)
            roll = rollups(bench, registry, rollup_source, stream)
        console.print(f"rollups: Beam {roll.beam_s:.1f} s, InfluxQL {roll.cq_district_1m_s:.1f} s (district 1 m), "
                      f"{roll.cq_all_s:.1f} s (all); {roll.equal:,} equal, {roll.differ:,} differ")  # fmt: skip
        lives = []
        for consumer in (
            Ingest(bench, "smartcity ingest", "live_ingest", [{"client_id": "bench-live-ingest"}]),
            NodeRed(bench, node, "Node-RED flow", "live_nodered", "bench-live-nodered"),
            Ingest(bench, TLS_LABEL, "live_tls", [{"client_id": "bench-live-tls", **bench.tls_settings()}]),
        ):
            with console.status(f"live: {consumer.label}, {args.rate:,.0f} msg/s for {args.live_s:.0f} s"):
                wait_idle(bench)
                row = live(bench, registry, consumer, args)
            lives.append(row)
            console.print(f"live {consumer.label}: p50 {row.p50_ms:,.0f} ms, p99 {row.p99_ms:,.0f} ms, lost {row.lost}")
        about = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "machine": machine(),
            "versions": versions(bench, node),
            "load_before": load_before,
            "load_after": "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg()),
        }
    finally:
        with console.status("stopping Mosquitto and InfluxDB"):
            bench.close()
        if args.keep:
            console.print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(args, stream, drains, lives, roll, about)
    print(text)
    if not args.no_doc:
        write_doc(text)
        plot(drains, lives, PLOT)
        console.print(f"wrote {DOC.relative_to(ROOT)} (Peer comparison) and {PLOT.relative_to(ROOT)}")
    console.print(f"bench: done in {(time.monotonic() - began) / 60:.1f} min")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: every process the bench started is stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--messages", type=int, default=200_000, help="messages in the drain stream (default 200,000)")
    parser.add_argument("--rate", type=float, default=2_000, help="live readings/s (default 2,000)")
    parser.add_argument("--live-s", type=float, default=30, help="length of the live run in seconds (default 30)")
    parser.add_argument("--faults", default=FAULTS, help="simulator faults (default: about 2 %% bad payloads)")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved drain rounds; the median is shown (3)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md and the plot")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, spools, Node-RED userDirs)")
    args = parser.parse_args(argv)
    if args.messages < 1_000 or args.rate <= 0 or args.live_s < 5 or args.rounds < 1:
        parser.error("--messages must be at least 1,000, --rate positive, --live-s at least 5 and --rounds at least 1")
    try:
        parse_faults(args.faults)
    except SmartcityError as err:
        parser.error(str(err))
    signal.signal(signal.SIGTERM, _interrupt)
    command = "python -m bench.compare" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    try:
        return run(args, command)
    except SmartcityError as err:
        console.print(f"bench: error: {err}")
        return 1
    except KeyboardInterrupt:
        console.print("bench: interrupted; everything it started is stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
