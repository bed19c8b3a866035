"""Mosquitto's autosave: what a kill -9 loses against how long each save stalls publishers.

Mosquitto acknowledges a QoS 1 publish (PUBACK) when the message is in its memory, and writes all of
its state to `mosquitto.db` at each autosave (`autosave_interval` seconds, or that many changes with
`autosave_on_changes`). A kill -9 therefore loses the queued messages that arrived since the last
save. Each save rewrites the whole queue, and the broker serves nobody meanwhile.

For each backlog size (messages queued for an offline persistent session, as for an ingest that is
behind) and each autosave setting, on a broker of its own (deploy.servers, the generated config):

1. queue the backlog (~250-byte readings) and restart the broker with the setting under test;
2. publish at `--rate` for `--seconds` with a QoS 1 publisher, timing each PUBACK: the longest
   wait is the stall of a save;
3. kill -9 the broker at a random point of that run, restart it, and count what it restored
   (`$SYS/broker/store/messages/count` minus the retained messages): lost = queued before + acknowledged
   during the run - restored.

It also reports the broker's memory and `mosquitto.db` bytes per queued message at the largest
backlog (the basis of the queue caps in deploy/broker_conf.py). Prints a markdown table.

EXAMPLES
    .venv/bin/python -m bench.broker_autosave
    .venv/bin/python -m bench.broker_autosave --backlogs 0 100000 --rate 2000 --seconds 10 --seed 7
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from deploy import broker_auth
from deploy.broker_auth import AclRule
from deploy.servers import Mosquitto, free_port

USER = broker_auth.ADMIN_USER
TOPIC = "bench/readings"
SUBSCRIBER = "admin-bench-queue"  # the offline persistent session that holds the backlog
PAYLOAD = json.dumps({"ts": 1773900000000, "values": {"pm25": 12.5, "pm10": 20.1, "co2": 415.0}, "seq": 0})
PAYLOAD_BYTES = (PAYLOAD + " " * 160).encode()[:250]
# (label, autosave_on_changes, autosave_interval)
SETTINGS: list[tuple[str, bool, int]] = [
    ("every 10 s (old default)", False, 10),
    ("every 2 s", False, 2),
    ("every 100,000 changes", True, 100_000),
    ("every 10,000 changes", True, 10_000),
    ("every 1,000 changes", True, 1_000),
]


@dataclass
class Result:
    setting: str
    backlog: int
    acknowledged: int
    lost: int
    max_wait_s: float
    waits_over_100ms: int
    run_s: float


@dataclass
class Broker:
    folder: Path
    password: str
    port: int = field(default_factory=free_port)
    server: Mosquitto | None = None

    def start(self, on_changes: bool, interval: int) -> None:
        self.server = Mosquitto(
            data_dir=self.folder,
            port=self.port,
            password_file=self.folder / "passwd",
            acl_file=self.folder / "acl",
            autosave_on_changes=on_changes,
            autosave_interval=interval,
            extra_settings=("sys_interval 1",),
        )
        self.server.start()

    def client(self, client_id: str = "", clean_start: bool = True) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(USER, self.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 86_400
        client.connect("127.0.0.1", self.port, clean_start=clean_start, properties=properties)
        client.loop_start()
        if not connected.wait(30):
            raise RuntimeError("the benchmark client could not connect")
        return client

    def queued(self) -> int:
        """Messages in the store less the retained ones, once two readings a second apart agree."""
        values: dict[str, int] = {}
        client = self.client()
        client.on_message = lambda _c, _u, m: values.__setitem__(m.topic, int(m.payload))
        client.subscribe([("$SYS/broker/store/messages/count", 0), ("$SYS/broker/retained messages/count", 0)])
        previous, deadline = -1, time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1.2)
            if len(values) == 2:
                current = values["$SYS/broker/store/messages/count"] - values["$SYS/broker/retained messages/count"]
                if current == previous:
                    break
                previous = current
        client.disconnect()
        client.loop_stop()
        return previous

    def rss_bytes(self) -> int:
        assert self.server is not None and self.server.pid is not None
        for line in Path(f"/proc/{self.server.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


class Publisher:
    """QoS 1 at a steady rate with a window of 1000; remembers when each publish went out and its PUBACK came."""

    def __init__(self, broker: Broker) -> None:
        self.client = broker.client()
        self.sent: dict[int, float] = {}  # by the publishing thread
        self.acks: list[tuple[int, float]] = []  # by paho's network thread (no lock: paho holds its own)
        self.published = 0
        self.client.on_publish = lambda _c, _u, mid, *_rest: self.acks.append((mid, time.monotonic()))

    def run(self, count: int, rate: float, stop: threading.Event) -> None:
        started = time.monotonic()
        for n in range(count):
            if rate:
                delay = started + n / rate - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
            while self.published - len(self.acks) >= 1000:
                if stop.wait(0.001):
                    return
            now = time.monotonic()
            info = self.client.publish(TOPIC, PAYLOAD_BYTES, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS or stop.is_set():
                return
            self.sent[info.mid] = now
            self.published += 1

    def waits(self, now: float) -> tuple[int, list[float]]:
        """PUBACKs so far, and every publish's wait for its PUBACK (up to `now` for those still waiting)."""
        acks = dict(self.acks)
        sent = dict(self.sent)
        return len(acks), [acks.get(mid, now) - at for mid, at in sent.items()]

    def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acks) < self.published and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def prepare(folder: Path) -> str:
    password = broker_auth.new_password()
    broker_auth.write_private(folder / "passwd", broker_auth.render_password_file({USER: password}))
    rules = {USER: [AclRule("readwrite", "#"), AclRule("read", "$SYS/#")]}
    broker_auth.write_private(folder / "acl", broker_auth.render_acl_file(rules))
    return password


def subscribe_offline(broker: Broker) -> None:
    client = broker.client(SUBSCRIBER, clean_start=False)
    done = threading.Event()
    client.on_subscribe = lambda *args: done.set()
    client.subscribe(TOPIC, qos=1)
    done.wait(10)
    client.disconnect()
    client.loop_stop()


def fill(broker: Broker, count: int) -> None:
    if count:
        publisher = Publisher(broker)
        publisher.run(count, 0, threading.Event())
        publisher.wait_all(120)
        publisher.close()


def measure(broker: Broker, label: str, on_changes: bool, interval: int, rate: float, seconds: float,
            rng: random.Random) -> Result:  # fmt: skip
    assert broker.server is not None
    broker.server.stop()  # SIGTERM: saves; the setting under test starts from a saved backlog
    broker.start(on_changes, interval)
    before = broker.queued()
    publisher = Publisher(broker)
    stop = threading.Event()
    thread = threading.Thread(target=publisher.run, args=(int(rate * seconds), rate, stop), daemon=True)
    started = time.monotonic()
    thread.start()
    time.sleep(rng.uniform(0.3, 1.0) * seconds)
    broker.server.kill()
    # Publishes still waiting for their PUBACK at the kill count with a wait of the time so far.
    acknowledged, waits = publisher.waits(time.monotonic())
    run_s = time.monotonic() - started
    stop.set()
    thread.join(10)
    publisher.client.loop_stop()
    broker.start(on_changes, interval)
    restored = broker.queued()
    return Result(label, before, acknowledged, before + acknowledged - restored, max(waits, default=0.0),
                  sum(1 for w in waits if w > 0.1), run_s)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlogs", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    parser.add_argument("--rate", type=float, default=2000.0, help="publishes per second during a run")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of a run (the kill is at 30-100%%)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    results: list[Result] = []
    footprint = ""
    for backlog in args.backlogs:
        with tempfile.TemporaryDirectory(prefix="bench-autosave-") as tmp:
            folder = Path(tmp)
            broker = Broker(folder, prepare(folder))
            broker.start(False, 3600)
            subscribe_offline(broker)
            empty_rss = broker.rss_bytes()
            started = time.monotonic()
            fill(broker, backlog)
            print(f"backlog {backlog:,}: queued in {time.monotonic() - started:.0f} s", flush=True)
            if backlog == max(args.backlogs) and backlog:
                rss = broker.rss_bytes() - empty_rss
                assert broker.server is not None
                broker.server.stop()
                db = (folder / "data" / "mosquitto.db").stat().st_size
                footprint = (
                    f"At {backlog:,} queued {len(PAYLOAD_BYTES)}-byte messages the broker holds "
                    f"{rss / backlog:.0f} bytes of memory and {db / backlog:.0f} bytes of `mosquitto.db` per message "
                    f"({rss / len(PAYLOAD_BYTES) / backlog:.1f}x and "
                    f"{db / len(PAYLOAD_BYTES) / backlog:.1f}x the payload)."
                )
                broker.start(False, 3600)
            for label, on_changes, interval in SETTINGS:
                result = measure(broker, label, on_changes, interval, args.rate, args.seconds, rng)
                results.append(result)
                print(result, flush=True)
            assert broker.server is not None
            broker.server.stop()

    print()
    print(f"`python -m bench.broker_autosave {' '.join(argv or [])}`".replace(" `", "`"))
    machine = platform.machine()
    print(f"({machine}, Mosquitto 2.0.11, {args.rate:.0f} msg/s for up to {args.seconds:.0f} s, seed {args.seed})")
    print()
    print("| backlog (queued) | autosave | acknowledged in the run | lost by kill -9 | longest PUBACK wait "
          "| PUBACKs > 100 ms |")  # fmt: skip
    print("|--:|---|--:|--:|--:|--:|")
    for r in results:
        print(f"| {r.backlog:,} | {r.setting} | {r.acknowledged:,} | {r.lost:,} | {r.max_wait_s:.2f} s "
              f"| {r.waits_over_100ms:,} |")  # fmt: skip
    if footprint:
        print()
        print(footprint)


if __name__ == "__main__":
    main()
