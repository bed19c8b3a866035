"""Test helpers for ingest: deterministic readings, a windowed QoS 1 publisher, `smartcity ingest` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.servers import basic_auth
from deploy.stack import INFLUX_ADMIN
from sensors.registry import Registry, Sensor, default_registry
from tests.servers import StackHandle

PUBLISH_WINDOW = 2000


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    sensor_id: str
    kind: str
    ts: int
    values: dict[str, float]


def messages(count: int, *, slot: int, city: str | None = None, registry: Registry | None = None) -> list[Message]:
    """`count` valid readings spread over the fleet (of one city), each (sensor, ts) distinct.

    Each test passes its own `slot`: its readings lie in their own hour of the
    last days, so tests sharing the session's InfluxDB never see each other's points.
    """
    registry = registry or default_registry()
    sensors: list[Sensor] = registry.sensors_of(city=city)
    now = int(time.time() * 1000)
    start = now - now % 3_600_000 - (slot + 2) * 3_600_000 + (0 if city != "chiang-mai" else 1_800_000)
    out = []
    for i in range(count):
        sensor = sensors[i % len(sensors)]
        kind = registry.kinds[sensor.kind]
        ts = start + (i // len(sensors)) * 1000
        values = {m.name: round(m.min + (m.max - m.min) * ((i * 7919) % 1000) / 1000, 3) for m in kind.metrics}
        payload = json.dumps({"ts": ts, "values": values, "seq": i}).encode()
        out.append(Message(sensor.topic, payload, sensor.id, sensor.kind, ts, values))
    return out


class Publisher:
    """A QoS 1 publisher that keeps at most `window` messages unacknowledged by the broker."""

    def __init__(self, stack: StackHandle, client_id: str = "") -> None:
        self._cond = threading.Condition()
        self._outstanding = 0
        self.client = stack.mqtt_client(client_id=client_id)
        self.client.on_publish = self._on_publish

    def _on_publish(self, *args: Any) -> None:
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()

    def publish(
        self,
        items: Sequence[Message | tuple[str, bytes]],
        rate_per_s: float | None = None,
        window: int = PUBLISH_WINDOW,
    ) -> None:
        started = time.monotonic()
        for n, item in enumerate(items):
            topic, payload = (item.topic, item.payload) if isinstance(item, Message) else (item[0], item[1])
            if rate_per_s:
                delay = started + n / rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            with self._cond:
                if not self._cond.wait_for(lambda: self._outstanding < window, timeout=60):
                    raise AssertionError("broker stopped acknowledging publishes")
                self._outstanding += 1
            self.client.publish(topic, payload, qos=1)
        self.wait()

    def wait(self, timeout_s: float = 60) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._outstanding <= 0, timeout=timeout_s):
                raise AssertionError(f"{self._outstanding} publishes not acknowledged by the broker")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(
    stack: StackHandle, items: Sequence[Message | tuple[str, bytes]], rate_per_s: float | None = None
) -> None:
    """Publish `items` at QoS 1 with a client of its own, and return once the broker acknowledged each."""
    publisher = Publisher(stack)
    try:
        publisher.publish(items, rate_per_s)
    finally:
        publisher.close()


def ingest_env(stack: StackHandle, home: Path, **settings: Any) -> dict[str, str]:
    """Environment for a `smartcity ingest` process: the stack's variables plus SMARTCITY_INGEST_*."""
    env = dict(os.environ)
    env.update(stack.env(home=home))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("SMARTCITY_INGEST_METRICS_INTERVAL_S", "1")
    env.setdefault("SMARTCITY_INGEST_RECONNECT_MAX_DELAY_S", "2")
    # The session-scoped broker would otherwise queue every later test's messages for each finished test's
    # session for 14 days (it grew to 1.36 GB); 2 minutes covers any restart within a test.
    env.setdefault("SMARTCITY_INGEST_SESSION_EXPIRY_S", "120")
    for key, value in settings.items():
        env[f"SMARTCITY_INGEST_{key.upper()}"] = str(value)
    return env


class IngestProcess:
    """A real `smartcity ingest` subprocess with its log in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "-v", "ingest", "--quiet", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_log(self, text: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"ingest exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the ingest log within {timeout_s} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def terminate(self, timeout_s: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def __enter__(self) -> IngestProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


def raw_points(stack: StackHandle, items: Sequence[Message]) -> dict[tuple[str, int], dict[str, float]]:
    """(sensor_id, ts ms) -> field values of the raw points in the kinds and time range of `items`."""
    found: dict[tuple[str, int], dict[str, float]] = {}
    start = min(m.ts for m in items)
    end = max(m.ts for m in items)
    for kind in sorted({m.kind for m in items}):
        result = influx_query(stack, f'SELECT * FROM "raw"."{kind}" WHERE time >= {start}ms AND time <= {end}ms')
        for series in result["results"][0].get("series", []):
            columns = series["columns"]
            for row in series["values"]:
                record = dict(zip(columns, row, strict=True))
                key = (record["sensor_id"], int(record["time"]))
                # InfluxDB's JSON writes a float field without a fraction as an integer (595.0 -> 595).
                found[key] = {k: float(v) for k, v in record.items() if k != "time" and isinstance(v, int | float)}
    return found


def influx_query(stack: StackHandle, statement: str) -> dict[str, Any]:
    """InfluxQL over plain HTTP as admin, times in epoch milliseconds."""
    params = urllib.parse.urlencode({"q": statement, "db": "smartcity", "epoch": "ms"}).encode()
    request = urllib.request.Request(f"{stack.influx_url}/query", data=params, method="POST")
    request.add_header("Authorization", basic_auth(INFLUX_ADMIN, stack.influx_admin_password))
    with urllib.request.urlopen(request, timeout=30) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def expected_points(items: Sequence[Message]) -> dict[tuple[str, int], dict[str, float]]:
    return {(m.sensor_id, m.ts): m.values for m in items}


def wait_for_points(stack: StackHandle, items: Sequence[Message], timeout_s: float) -> None:
    """Until InfluxDB holds exactly the points of `items`, with their values; fails with what differs."""
    expected = expected_points(items)
    deadline = time.monotonic() + timeout_s
    while True:
        found = raw_points(stack, items)
        if found == expected:
            return
        if time.monotonic() > deadline:
            missing = expected.keys() - found.keys()
            wrong = [k for k in expected.keys() & found.keys() if found[k] != expected[k]]
            raise AssertionError(
                f"{len(missing)} of {len(expected)} points missing (e.g. {sorted(missing)[:3]}), "
                f"{len(wrong)} with other values, {len(found.keys() - expected.keys())} unexpected"
            )
        time.sleep(0.25)


class BackgroundPublisher(threading.Thread):
    """Publishes `items` at `rate_per_s` from a thread (so a test can crash things meanwhile)."""

    def __init__(self, stack: StackHandle, items: Sequence[Message], rate_per_s: float, client_id: str = "") -> None:
        super().__init__(daemon=True)
        self.publisher = Publisher(stack, client_id=client_id)
        self.items = items
        self.rate_per_s = rate_per_s
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.publisher.publish(self.items, rate_per_s=self.rate_per_s)
        except BaseException as err:
            self.error = err

    def finish(self, timeout_s: float = 120) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "publisher did not finish"
        self.publisher.close()
        if self.error is not None:
            raise self.error


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
