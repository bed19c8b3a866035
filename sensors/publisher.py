"""Publishing a simulation over MQTT, and the manifest of what the broker acknowledged.

- `Publisher` sends messages with MQTT 5 at QoS 1, one connection per vendor with
  its own credentials, in a single thread: it drives paho's socket loop itself
  (no network thread, no locks), keeps at most `max_inflight` publishes
  unacknowledged (paho fails beyond 65,535) and reports each PUBACK.
- `Tally` counts what the broker acknowledged and writes the manifest that
  `smartcity audit` joins with InfluxDB and the reject store.
- `run` publishes a `sensors.simulator.Simulation`'s messages on time;
  `run_processes` splits its sensors between several such publishers, one
  process each (one Python process publishes about 10k messages/s), and merges
  what their brokers acknowledged into one `Tally`.

The manifest (JSON, written atomically at the end, also after Ctrl-C) says per
sensor, vendor and UTC hour what was sent:

- `readings`: `good` = distinct (sensor_id, ts) that must be stored (including
  `late` and `out_of_order` ones), `duplicates` = extra copies (stored once);
  `hour` is the UTC hour of the reading's ts, as in InfluxDB.
- `rejects`: messages sent to be rejected, by expected reject code; `hour` is
  the UTC hour the broker acknowledged them, which is within moments of
  ingest's `received_at` while ingest keeps up (a rejected message may carry
  no usable ts, so its own ts cannot be the key). Unregistered sensors' messages
  come from the admin account acting as a misconfigured gateway (a vendor's
  ACL does not let it publish there) and are listed under vendor `_gateway`.
- `refused`: PUBACKs with an error (e.g. "Not authorized"): those never
  reached ingest; `unconfirmed`: publishes without any PUBACK when the run
  stopped (they may or may not have arrived).
- `silent_sensors`: sensors that published nothing during the run; `dropped`
  (per sensor and in the totals): readings the `drop` fault never sent.

Why one file of about 600 lines: `Publisher`, `Tally` and `run`/`run_processes` are one
protocol: what is counted as acknowledged, unconfirmed or refused is decided by how the
publisher drives paho, and the manifest's totals by how the processes' tallies merge. The
message generation it publishes is `sensors.simulator`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from sensors.broker_url import BrokerAddress
from sensors.files import write_json_atomic
from sensors.registry import Sensor
from sensors.simulator import (
    DUPLICATE,
    GOOD,
    HOUR_MS,
    LATE,
    OUT_OF_ORDER,
    STORED,
    SensorInfo,
    Simulation,
    SimulatorError,
    Token,
)

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "smartcity.simulate.manifest/1"


# -- counting and the manifest --------------------------------------------------------------------


class Tally:
    """What the broker acknowledged, by sensor, hour and category; turns into the manifest."""

    def __init__(self, info: dict[str, SensorInfo]) -> None:
        self.info = info  # shared with the Simulation, which adds the unregistered sensors it makes up
        self.counts: Counter[Token] = Counter()
        self.refused: Counter[tuple[str, str]] = Counter()
        self.unconfirmed: Counter[tuple[str, str]] = Counter()
        self.acknowledged = 0

    def ack(self, token: Token, failure: str | None) -> None:
        sensor_id, hour, category = token
        if failure is not None:
            self.refused[(sensor_id, failure)] += 1
            return
        self.acknowledged += 1
        if category not in STORED and category != DUPLICATE:
            hour = int(time.time() * 1000) // HOUR_MS  # rejects: keyed by when they were sent
        self.counts[(sensor_id, hour, category)] += 1

    def lost(self, tokens: Iterable[Token]) -> None:
        for sensor_id, _, category in tokens:
            self.unconfirmed[(sensor_id, category)] += 1

    def merge(self, other: Tally) -> None:
        """Add what another publisher's broker acknowledged (another share of the sensors)."""
        self.counts.update(other.counts)
        self.refused.update(other.refused)
        self.unconfirmed.update(other.unconfirmed)
        self.acknowledged += other.acknowledged
        for sensor_id, info in other.info.items():  # with the unregistered sensors its gateway made up
            self.info.setdefault(sensor_id, info)

    def totals(self) -> dict[str, Any]:
        return _totals(self.counts.items(), self.refused.items(), self.unconfirmed.items())

    def manifest(
        self, run: Mapping[str, Any], silent: Sequence[str], dropped: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        dropped = dropped or {}
        readings: dict[tuple[int, str], Counter[str]] = {}
        rejects: list[dict[str, Any]] = []
        for (sensor_id, hour, category), count in sorted(self.counts.items()):
            info = self.info[sensor_id]
            if category in STORED or category == DUPLICATE:
                readings.setdefault((hour, sensor_id), Counter())[category] += count
            else:
                rejects.append(
                    {"hour": _hour(hour), "vendor": info.vendor, "sensor_id": sensor_id, "topic": info.topic}
                    | {"code": category, "count": count}
                )
        reading_rows = []
        for (hour, sensor_id), c in sorted(readings.items()):
            info = self.info[sensor_id]
            reading_rows.append(
                {"hour": _hour(hour), "vendor": info.vendor, "sensor_id": sensor_id, "city": info.city}
                | {"kind": info.kind, "good": c[GOOD] + c[LATE] + c[OUT_OF_ORDER], "late": c[LATE]}
                | {"out_of_order": c[OUT_OF_ORDER], "duplicates": c[DUPLICATE]}
            )
        counts: dict[str, list[tuple[Token, int]]] = {}
        refused: dict[str, list[tuple[tuple[str, str], int]]] = {}
        unconfirmed: dict[str, list[tuple[tuple[str, str], int]]] = {}
        for table, source in ((counts, self.counts), (refused, self.refused), (unconfirmed, self.unconfirmed)):
            for key, n in source.items():
                table.setdefault(key[0], []).append((key, n))  # type: ignore[arg-type]
        silent_set = set(silent)
        by_sensor: dict[str, Any] = {}
        for sensor_id in sorted(set(counts) | set(refused) | set(unconfirmed) | silent_set | set(dropped)):
            info = self.info[sensor_id]
            by_sensor[sensor_id] = {
                "vendor": info.vendor,
                "city": info.city,
                "kind": info.kind,
                "topic": info.topic,
                "silent": sensor_id in silent_set,
                "dropped": dropped.get(sensor_id, 0),
            } | _totals(counts.get(sensor_id, []), refused.get(sensor_id, []), unconfirmed.get(sensor_id, []))
        by_vendor: dict[str, Any] = {}
        for vendor in sorted({i["vendor"] for i in by_sensor.values()}):
            ids = [s for s, i in by_sensor.items() if i["vendor"] == vendor]
            by_vendor[vendor] = _totals(
                [kv for s in ids for kv in counts.get(s, [])],
                [kv for s in ids for kv in refused.get(s, [])],
                [kv for s in ids for kv in unconfirmed.get(s, [])],
            ) | {"sensors": len(ids), "silent_sensors": len(silent_set.intersection(ids))}
        return {
            "format": MANIFEST_FORMAT,
            "run": dict(run),
            "hour": (
                "UTC hour. readings: hour of the reading's ts (as stored in InfluxDB); rejects: hour the "
                "broker acknowledged the message (close to ingest's received_at)."
            ),
            "totals": self.totals()
            | {"sensors": len(by_sensor), "silent_sensors": len(silent), "dropped": sum(dropped.values())},
            "vendors": by_vendor,
            "sensors": by_sensor,
            "readings": reading_rows,
            "rejects": rejects,
            "refused": [
                {"vendor": self.info[s].vendor, "sensor_id": s, "topic": self.info[s].topic, "reason": r, "count": n}
                for (s, r), n in sorted(self.refused.items())
            ],
            "silent_sensors": sorted(silent),
        }


def _totals(
    counts: Iterable[tuple[Token, int]],
    refused: Iterable[tuple[tuple[str, str], int]],
    unconfirmed: Iterable[tuple[tuple[str, str], int]],
) -> dict[str, Any]:
    by_category: Counter[str] = Counter()
    for (_, _, category), n in counts:
        by_category[category] += n
    rejected = {c: n for c, n in sorted(by_category.items()) if c not in STORED and c != DUPLICATE}
    refused_by: Counter[str] = Counter()
    for (_, reason), n in refused:
        refused_by[reason] += n
    return {
        "messages": sum(by_category.values()),  # acknowledged: what a subscriber receives
        "good": sum(by_category[c] for c in STORED),
        "late": by_category[LATE],
        "out_of_order": by_category[OUT_OF_ORDER],
        "duplicates": by_category[DUPLICATE],
        "rejected": rejected,
        "refused": dict(sorted(refused_by.items())),
        "unconfirmed": sum(n for _, n in unconfirmed),
    }


def _hour(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write atomically: a reader (audit) sees the old file or the complete new one, never half."""
    write_json_atomic(path, manifest, indent=1)


# -- the broker --------------------------------------------------------------------------------


def load_passwords(path: Path, accounts: Iterable[str]) -> dict[str, str]:
    """The broker password of each account from `{"user": "password"}` (written by `stack up` / `sensors acl`)."""
    try:
        passwords = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimulatorError(
            f"{path}: no broker credentials; run 'smartcity stack up' or 'smartcity sensors acl' first"
        ) from None
    except (OSError, ValueError) as err:
        raise SimulatorError(f"{path}: cannot read broker credentials: {err}") from None
    if not isinstance(passwords, dict):
        raise SimulatorError(f"{path}: expected a JSON object of user -> password")
    missing = [a for a in accounts if not isinstance(passwords.get(a), str)]
    if missing:
        raise SimulatorError(
            f"{path}: no password for {', '.join(missing)}; rerun 'smartcity stack up' (or 'smartcity sensors acl') "
            "with the same --registry"
        )
    return {a: passwords[a] for a in accounts}


@dataclass
class _Connection:
    account: str
    client: mqtt.Client
    inflight: dict[int, Token] = field(default_factory=dict)
    connected: bool = False
    refused: str | None = None
    lost_since: float | None = None
    next_attempt: float = 0.0
    retries: int = 0


class Publisher:
    """MQTT 5 QoS 1 publishing for several accounts from one thread.

    There is no paho network thread: `publish` writes to the socket directly and
    `poll` reads PUBACKs (and sends keepalives), so acknowledgements are
    counted without locks. At most `max_inflight` publishes (over all
    accounts) wait for their PUBACK; `publish` polls until one is free. A lost
    connection is reconnected for up to `reconnect_s`; paho then resends the
    unacknowledged messages.
    """

    def __init__(
        self,
        address: BrokerAddress,
        passwords: Mapping[str, str],
        on_ack: Callable[[Token, str | None], None],
        *,
        max_inflight: int = 1_000,
        client_prefix: str = "smartcity-sim",
        stop: threading.Event | None = None,
        reconnect_s: float = 60.0,
    ) -> None:
        if not 1 <= max_inflight <= 65_535:
            raise SimulatorError(f"--max-inflight: {max_inflight} is outside 1..65535 (MQTT packet ids are 16 bit)")
        self.address = address
        self.on_ack = on_ack
        self.max_inflight = max_inflight
        self.stop = stop or threading.Event()
        self.reconnect_s = reconnect_s
        self.inflight = 0
        self._closing = False
        self._next_misc = 0.0
        self._conns: dict[str, _Connection] = {}
        for account, password in passwords.items():
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"{account}-{client_prefix}-{os.getpid()}",  # a vendor owns only `<account>-...`
                protocol=mqtt.MQTTv5,
            )
            client.username_pw_set(account, password)
            client.max_inflight_messages_set(max_inflight)  # our window is the only limit
            client.max_queued_messages_set(0)
            address.apply_tls(client)
            conn = _Connection(account, client)
            client.on_connect = self._on_connect(conn)
            client.on_disconnect = self._on_disconnect(conn)
            client.on_publish = self._on_publish(conn)
            self._conns[account] = conn

    # -- paho callbacks (called from poll(), in this thread) -------------------------------------

    def _on_connect(self, conn: _Connection) -> Callable[..., None]:
        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if reason.is_failure:
                conn.refused = str(reason)
            else:
                conn.connected, conn.lost_since, conn.retries = True, None, 0
                logger.info("connected to %s as %s", self.address, conn.account)

        return on_connect

    def _on_disconnect(self, conn: _Connection) -> Callable[..., None]:
        def on_disconnect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if conn.connected and not self._closing:
                logger.warning("lost the connection of %s: %s; reconnecting", conn.account, reason)
            conn.connected = False
            if conn.lost_since is None:
                conn.lost_since = time.monotonic()

        return on_disconnect

    def _on_publish(self, conn: _Connection) -> Callable[..., None]:
        def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            token = conn.inflight.pop(mid, None)
            if token is None:
                return
            self.inflight -= 1
            self.on_ack(token, str(reason) if reason.is_failure else None)

        return on_publish

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Publisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect every account; a refusal or an unreachable broker is a SimulatorError naming the account."""
        for conn in self._conns.values():
            try:
                conn.client.connect(self.address.host, self.address.port, keepalive=30)
            except OSError as err:
                self.close()
                raise SimulatorError(f"cannot reach the broker at {self.address}: {err.strerror or err}") from None
        deadline = time.monotonic() + timeout_s
        while not all(c.connected or c.refused for c in self._conns.values()):
            if time.monotonic() > deadline:
                self.close()
                raise SimulatorError(f"no CONNACK from {self.address} within {timeout_s:.0f} s")
            self.poll(0.05)
        refused = [c for c in self._conns.values() if c.refused]
        if refused:
            self.close()
            names = ", ".join(f"{c.account} ({c.refused})" for c in refused)
            raise SimulatorError(
                f"the broker at {self.address} refused {names}; its accounts come from the registry given to "
                "'smartcity stack up --registry' or 'smartcity sensors acl'"
            )

    def close(self) -> None:
        self._closing = True
        for conn in self._conns.values():
            with contextlib.suppress(OSError, ValueError):
                conn.client.disconnect()
            sock = conn.client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    # -- publishing ------------------------------------------------------------------------------

    def publish(self, account: str, topic: str, payload: bytes, token: Token) -> bool:
        """Send at QoS 1 once the window has room; False if stopped while waiting."""
        while self.inflight >= self.max_inflight:
            if self.stop.is_set():
                return False
            self.poll(0.05)
        conn = self._conns[account]
        info = conn.client.publish(topic, payload, qos=1)
        # Without a connection, or losing it while writing, paho keeps the message and sends it after the reconnect.
        if info.rc not in (
            MQTTErrorCode.MQTT_ERR_SUCCESS,
            MQTTErrorCode.MQTT_ERR_NO_CONN,
            MQTTErrorCode.MQTT_ERR_CONN_LOST,
        ):
            raise SimulatorError(f"publishing as {account} to {topic} failed: {mqtt.error_string(info.rc)}")
        conn.inflight[info.mid] = token
        self.inflight += 1
        return True

    def poll(self, timeout_s: float) -> None:
        """Read acknowledgements, write what is pending, keep connections alive; waits up to `timeout_s`."""
        socks = {}
        for conn in self._conns.values():
            sock = conn.client.socket()
            if sock is not None:
                socks[sock] = conn
            elif not conn.connected and conn.refused is None:
                self._reconnect(conn)
        readable: list[Any] = []
        writable: list[Any] = []
        if socks:
            want_write = [s for s, c in socks.items() if c.client.want_write()]
            readable, writable, _ = select.select(list(socks), want_write, [], timeout_s)
            pending = [s for s in socks if s not in readable and getattr(s, "pending", lambda: 0)()]
            readable = [*readable, *pending]  # TLS: decrypted bytes select() cannot see
        elif timeout_s > 0:
            time.sleep(timeout_s)
        for sock in readable:
            socks[sock].client.loop_read()
        for sock in writable:
            socks[sock].client.loop_write()
        now = time.monotonic()
        if now >= self._next_misc:
            self._next_misc = now + 1.0
            for conn in self._conns.values():
                conn.client.loop_misc()

    def _reconnect(self, conn: _Connection) -> None:
        now = time.monotonic()
        if conn.lost_since is not None and now - conn.lost_since > self.reconnect_s:
            raise SimulatorError(f"lost the broker at {self.address} for {self.reconnect_s:.0f} s ({conn.account})")
        if now < conn.next_attempt:
            return
        conn.next_attempt = now + 1.0
        try:
            conn.client.reconnect()
        except OSError as err:  # once per second: say it once, then only in debug
            log = logger.debug if conn.retries else logger.warning
            log("reconnecting %s to %s: %s (retrying every second)", conn.account, self.address, err)
            conn.retries += 1

    def flush(self, timeout_s: float) -> list[Token]:
        """Wait for every PUBACK (up to `timeout_s`); returns the tokens still unacknowledged."""
        deadline = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < deadline:
            self.poll(0.05)
        left = [t for c in self._conns.values() for t in c.inflight.values()]
        for conn in self._conns.values():
            conn.inflight.clear()
        self.inflight = 0
        return left


# -- running a plan ------------------------------------------------------------------------------


@dataclass
class Progress:
    """Handed to the progress callback about every 0.2 s."""

    published: int
    acknowledged: int
    refused: int
    elapsed_s: float
    expected: int | None


def run(
    simulation: Simulation,
    publisher: Publisher,
    tally: Tally,
    *,
    on_progress: Callable[[Progress], None] = lambda _: None,
    flush_timeout_s: float = 30.0,
) -> bool:
    """Publish the simulation's messages on time; True if it ran to the end, False if stopped."""
    plan, stop = simulation.plan, publisher.stop
    expected = simulation.expected_messages()
    started = time.monotonic()
    published = 0
    next_report = 0.0
    finished = True

    def report() -> None:
        refused = sum(tally.refused.values())
        on_progress(Progress(published, tally.acknowledged, refused, time.monotonic() - started, expected))

    for message in simulation.messages():
        if not math.isinf(plan.speed):
            while (delay := plan.wall_ms(message.emit_ms) / 1000 - time.time()) > 0 and not stop.is_set():
                publisher.poll(min(delay, 0.2))
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + 0.2
                    report()
        if stop.is_set() or not publisher.publish(message.account, message.topic, message.payload, message.token):
            finished = False
            break
        published += 1
        if published % 64 == 0:
            publisher.poll(0)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + 0.2
                report()
    tally.lost(publisher.flush(flush_timeout_s))
    report()
    return finished


# -- several publisher processes ----------------------------------------------------------------


@dataclass
class _Share:
    """What one publisher process sends back: its tally, its `drop` counts, and how it ended."""

    tally: Tally
    dropped: Counter[str]
    finished: bool
    error: str | None


def run_processes(
    simulation: Simulation,
    address: BrokerAddress,
    passwords: Mapping[str, str],
    tally: Tally,
    processes: int,
    *,
    max_inflight: int = 1_000,
    stop: threading.Event | None = None,
    on_progress: Callable[[Progress], None] = lambda _: None,
) -> bool:
    """Publish `simulation` from `processes` processes, sensor k going to process k mod `processes`.

    Values and faults are functions of (seed, sensor, ts), so the shares together send exactly
    the messages one process would, and each sensor's messages keep their order (one process, one
    connection per account). Each process has its own connections (client ids end in its pid) and
    its own window of `max_inflight`. Their tallies and `drop` counts are merged into `tally` and
    `simulation.dropped`. True if every process ran to the end; a process that failed is a
    SimulatorError, raised once the others have finished and been merged.

    Processes are forked: they inherit the registry and the signal handlers (Ctrl-C reaches them
    all); a `stop` set here (SIGTERM to this process) is passed on to them as SIGTERM.
    """
    stop = stop or threading.Event()
    context = multiprocessing.get_context("fork")
    counters = context.Array("q", 2 * processes, lock=False)  # per process: published, acknowledged
    shares = [list(simulation.sensors[k::processes]) for k in range(processes)]
    started = time.monotonic()
    workers: dict[Any, tuple[int, Any]] = {}  # pipe end -> (share, process)
    for k, sensors in enumerate(shares):
        if not sensors:
            continue
        reader, writer = context.Pipe(duplex=False)
        worker = context.Process(
            target=_publish_share,
            args=(simulation, sensors, address, passwords, max_inflight, stop, writer, counters, k),
            name=f"simulate-{k + 1}",
        )
        worker.start()
        writer.close()
        workers[reader] = (k, worker)
    expected = simulation.expected_messages()
    finished, errors, forwarded = True, [], False

    def report() -> None:
        published, acknowledged = sum(counters[0::2]), sum(counters[1::2])
        refused = sum(tally.refused.values())
        on_progress(Progress(published, acknowledged, refused, time.monotonic() - started, expected))

    while workers:
        ready: list[Any] = multiprocessing.connection.wait(list(workers), timeout=0.2)
        for reader in ready:
            k, worker = workers.pop(reader)
            try:
                share: _Share = reader.recv()
            except EOFError:
                worker.join()
                errors.append(f"publisher process {k + 1} of {processes} died (exit code {worker.exitcode})")
                finished = False
                continue
            finally:
                reader.close()
            tally.merge(share.tally)
            simulation.dropped.update(share.dropped)
            finished = finished and share.finished
            if share.error is not None:
                errors.append(share.error)
            worker.join()
        if stop.is_set() and not forwarded:
            forwarded = True
            for _, worker in workers.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        report()
    if errors:
        raise SimulatorError("; ".join(dict.fromkeys(errors)))
    return finished


def _publish_share(
    simulation: Simulation,
    sensors: Sequence[Sensor],
    address: BrokerAddress,
    passwords: Mapping[str, str],
    max_inflight: int,
    stop: threading.Event,
    out: multiprocessing.connection.Connection,
    counters: Any,
    k: int,
) -> None:
    """One publisher process: its share of the sensors, its own connections; the outcome goes to `out`."""
    share = Simulation(simulation.registry, sensors, simulation.plan)
    tally = Tally(share.info)

    def progress(p: Progress) -> None:
        counters[2 * k], counters[2 * k + 1] = p.published, p.acknowledged

    finished, error = False, None
    try:
        accounts = {account: passwords[account] for account in share.accounts}
        with Publisher(address, accounts, tally.ack, max_inflight=max_inflight, stop=stop) as publisher:
            finished = run(share, publisher, tally, on_progress=progress)
    except SimulatorError as err:
        error = str(err)
    out.send(_Share(tally, share.dropped, finished, error))
    out.close()
