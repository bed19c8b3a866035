"""Simulator throughput: generating readings, and publishing them at QoS 1 through a real Mosquitto.

Starts its own Mosquitto (deploy.servers, the generated config, the registry's
broker accounts; free port, temp dir) and times, for a max-speed replay of the
whole built-in fleet (610 sensors, `--hours` of readings, `--faults default`):

- generation alone: `Simulation.messages()` (values, faults, payload bytes);
- publishing alone: the same messages, pre-generated, through `Publisher`
  (one MQTT 5 connection per vendor, QoS 1, PUBACKs counted);
- the whole run as `smartcity simulate --from ... --speed max` does it
  (`publisher.run`: generate, publish, count), without and with a QoS 1
  subscriber on smartcity/v1/# (`mosquitto_sub`, as ingest would be).

Prints a markdown table for docs/benchmarks.md and the command that made it.

EXAMPLES
    .venv/bin/python -m bench.simulate_publish
    .venv/bin/python -m bench.simulate_publish --hours 2 --max-inflight 2000
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from deploy.acl import write_broker_files
from deploy.servers import Mosquitto, find_binary, free_port
from sensors.broker_url import BrokerAddress
from sensors.faults import DEFAULT_FAULTS
from sensors.publisher import Publisher, Tally, run
from sensors.registry import default_registry
from sensors.simulator import Message, Plan, Simulation, select_sensors

START_MS = 1_773_900_000_000  # 2026-03-19T06:00:00Z


def simulation(hours: float) -> Simulation:
    registry = default_registry()
    now = int(time.time() * 1000)
    plan = Plan(START_MS, START_MS + int(hours * 3_600_000), 1, DEFAULT_FAULTS, wall_origin_ms=now, speed=float("inf"))
    return Simulation(registry, select_sensors(registry), plan)


def timed(what: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    count = what()
    return count, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0, help="hours of the fleet's readings to replay")
    parser.add_argument("--max-inflight", type=int, default=1_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        home = Path(tmp)
        registry = default_registry()
        _, _, passwords = write_broker_files(registry, home / "mosquitto", home / "users.json")
        broker = Mosquitto(
            data_dir=home / "mosquitto",
            port=free_port(),
            password_file=home / "mosquitto" / "passwd",
            acl_file=home / "mosquitto" / "acl",
        )
        broker.start()
        address = BrokerAddress("127.0.0.1", broker.port, tls=False)
        rows: list[tuple[str, int, float]] = []
        try:
            messages: list[Message] = []

            def generate() -> int:
                messages.extend(simulation(args.hours).messages())
                return len(messages)

            rows.append(("generate (values, faults, payloads)", *timed(generate)))

            def publish_only() -> int:
                sim = simulation(args.hours)
                tally = Tally(sim.info)
                accounts = {m.account for m in messages}
                with Publisher(
                    address, {a: passwords[a] for a in accounts}, tally.ack, max_inflight=args.max_inflight
                ) as publisher:
                    for m in messages:
                        publisher.publish(m.account, m.topic, m.payload, m.token)
                    publisher.flush(60)
                return tally.acknowledged

            rows.append(("publish pre-generated (QoS 1, acked)", *timed(publish_only)))

            def whole_run() -> int:
                sim = simulation(args.hours)
                tally = Tally(sim.info)
                with Publisher(
                    address, {a: passwords[a] for a in sim.accounts}, tally.ack, max_inflight=args.max_inflight
                ) as publisher:
                    run(sim, publisher, tally)
                return tally.acknowledged

            rows.append(("simulate --speed max (generate + publish)", *timed(whole_run)))
            login = ["-h", "127.0.0.1", "-p", str(broker.port), "-u", "admin", "-P", passwords["admin"]]
            sub = subprocess.Popen(
                [find_binary("mosquitto_sub"), *login, "-q", "1", "-t", "smartcity/v1/#"], stdout=subprocess.DEVNULL
            )
            try:
                threading.Event().wait(0.5)
                rows.append(("same, with a QoS 1 subscriber", *timed(whole_run)))
            finally:
                sub.terminate()
                sub.wait()
        finally:
            broker.stop()

    print("| step | messages | seconds | messages/s |\n|---|---:|---:|---:|")
    for name, count, seconds in rows:
        print(f"| {name} | {count:,} | {seconds:.2f} | {count / seconds:,.0f} |")
    print(
        f"\n{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        f"max_inflight {args.max_inflight}; command: python -m bench.simulate_publish {' '.join(sys.argv[1:])}".rstrip()
    )


if __name__ == "__main__":
    main()
