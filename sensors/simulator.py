"""The fleet simulator: realistic, deterministic readings for every sensor of the registry, over MQTT.

Three parts, each usable alone:

- `Simulation` turns the registry, a `Plan` (time range, seed, faults, how
  often sensors report) and `sensors.signals` into `Message`s in publishing
  order. Values and faults are pure functions of (seed, sensor, ts), so a
  replay of any range is reproducible and a live run equals a replay of the
  same hours. Sensors report on a fixed grid (`ts = phase + n * period`), at
  their kind's `interval_s` unless a live `--rate` asks for more. JSON payloads
  carry `seq`: the sensor's reading count since the run started (a run is a
  device restart: its counter starts at 0), first in the object, so that a torn
  payload still names it. Readings the `drop` fault loses skip their number.
- `Publisher` sends them with MQTT 5 at QoS 1, one connection per vendor with
  its own credentials, in a single thread: it drives paho's socket loop itself
  (no network thread, no locks), keeps at most `max_inflight` publishes
  unacknowledged (paho fails beyond 65,535) and reports each PUBACK.
- `Tally` counts what the broker acknowledged and writes the manifest that
  `smartcity audit` joins with InfluxDB and the reject store.

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

Size: about 890 lines: the plan, the message generator with its faults, the publisher and the
manifest. The seam is generation vs. publishing (Publisher, Tally); not yet cut.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from sensors import signals
from sensors.broker_url import BrokerAddress
from sensors.contract import RejectCode, reading_topic
from sensors.errors import SmartcityError
from sensors.faults import EXPECTED_CODE, SLOT_FAULTS, Fault
from sensors.files import write_json_atomic
from sensors.noise import F64, I64, stable_key, uniform, unit_random
from sensors.registry import Kind, Metric, Registry, Sensor

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "smartcity.simulate.manifest/1"
GATEWAY_VENDOR = "_gateway"
GATEWAY_ACCOUNT = "admin"  # the only account allowed to publish to unregistered sensors' topics
HOUR_MS = 3_600_000
# `ts_in_future`: Thai local time sent as if it were UTC.
FUTURE_SKEW_MS = 7 * HOUR_MS
# `ts_too_old` in SenML: the clock fell back to 2000-01-01 (absolute SenML time, not "relative").
CLOCK_RESET_S = 946_684_800
# Firmware error values that stand in for a reading (the first one outside the metric's range is sent).
ERROR_VALUES = (-9999.0, 65535.0, 999999.0, 1e12)
# Plausible unit mistakes for `unit_mismatch`; any other unit becomes "1" (dimensionless).
WRONG_UNITS = {
    "ug/m3": "mg/m3",
    "ppb": "ppm",
    "ppm": "ppb",
    "Cel": "K",
    "%RH": "%",
    "%": "/",
    "mm": "cm",
    "m/s": "km/h",
    "km/h": "m/s",
    "deg": "rad",
    "hPa": "Pa",
    "m": "cm",
    "dB": "dBA",
    "count": "1",
    "kW": "W",
    "kWh": "Wh",
}
MIN_PERIOD_MS = 10.0  # a faster --rate would give one sensor two readings in the same millisecond
CHUNK_MESSAGES = 2_000  # readings computed together (numpy) before they are sorted and sent


class SimulatorError(SmartcityError):
    """The simulator cannot run as asked (credentials, broker, options); the message names what to fix."""


Token = tuple[str, int, str]  # (sensor_id, UTC hour of ts, category): what a PUBACK confirms


class Message(NamedTuple):
    """One MQTT publish. `emit_ms` is the simulated time it is due (`order` breaks ties);
    `ts` is the time of the reading it carries (before a fault changed the payload's ts)."""

    emit_ms: float
    order: int
    account: str
    topic: str
    payload: bytes
    sensor_id: str
    ts: int
    category: str  # good | late | out_of_order | duplicate | a reject code

    @property
    def token(self) -> Token:
        return (self.sensor_id, self.ts // HOUR_MS, self.category)


GOOD = "good"
LATE = "late"
OUT_OF_ORDER = "out_of_order"
DUPLICATE = "duplicate"
STORED = (GOOD, LATE, OUT_OF_ORDER)


def select_sensors(registry: Registry, count: int | None = None) -> list[Sensor]:
    """The first `count` sensors of the fleet, spread evenly over cities and kinds (all if None).

    Deterministic: sensors of each (city, kind) are taken in registry order (which already
    rotates over sites and vendors), one group after the other.
    """
    groups: dict[tuple[str, str], list[Sensor]] = {}
    for sensor in registry.sensors.values():
        groups.setdefault((sensor.city, sensor.kind), []).append(sensor)
    order = [groups[key] for key in sorted(groups)]
    chosen: list[Sensor] = []
    depth = 0
    limit = len(registry.sensors) if count is None else min(count, len(registry.sensors))
    while len(chosen) < limit:
        for group in order:
            if depth < len(group) and len(chosen) < limit:
                chosen.append(group[depth])
        depth += 1
    return chosen


def natural_rate(registry: Registry, sensors: Iterable[Sensor]) -> float:
    """Messages per second when every sensor reports at its kind's interval."""
    return sum(1.0 / registry.kinds[s.kind].interval_s for s in sensors)


@dataclass(frozen=True)
class Plan:
    """What to simulate. Times are UTC epoch milliseconds.

    `time_scale` makes sensors report that many times per `interval_s` (a live
    `--rate` above the fleet's natural rate). `wall_origin_ms` and `speed` map
    simulated time to the wall clock (`speed` = simulated ms per wall ms,
    `inf` for as fast as possible); a live run has `wall_origin_ms = start_ms`
    and speed 1.
    """

    start_ms: int
    end_ms: int | None
    seed: int = 1
    faults: Mapping[Fault, float] = field(default_factory=dict)
    time_scale: float = 1.0
    wall_origin_ms: int | None = None
    speed: float = 1.0

    def wall_ms(self, sim_ms: float) -> float:
        """The wall-clock time a message due at `sim_ms` is published."""
        origin = self.start_ms if self.wall_origin_ms is None else self.wall_origin_ms
        if math.isinf(self.speed):
            return origin
        return origin + (sim_ms - self.start_ms) / self.speed


@dataclass(frozen=True)
class SensorInfo:
    """What the manifest says about a sensor (also unregistered ones sent by the gateway)."""

    vendor: str
    city: str
    kind: str
    topic: str


class Simulation:
    """Messages of a plan for a list of sensors, in the order they are due."""

    def __init__(self, registry: Registry, sensors: Sequence[Sensor], plan: Plan) -> None:
        self.registry = registry
        self.plan = plan
        self.faults = dict(plan.faults)
        silent_rate = self.faults.get(Fault.SILENT, 0.0)
        self.silent = [s.id for s in sensors if unit_random(plan.seed, s.id, "silent") < silent_rate]
        self.sensors = [s for s in sensors if s.id not in set(self.silent)]
        self.info: dict[str, SensorInfo] = {s.id: SensorInfo(s.vendor, s.city, s.kind, s.topic) for s in sensors}
        self.accounts = sorted({s.vendor for s in self.sensors})
        if self.faults.get(Fault.UNKNOWN_SENSOR):
            self.accounts.append(GATEWAY_ACCOUNT)
        self._groups = [
            _KindGroup(registry, kind, [s for s in self.sensors if s.kind == kind.id], plan)
            for kind in registry.kinds.values()
            if any(s.kind == kind.id for s in self.sensors)
        ]
        # Cumulative thresholds of the slot faults, for one uniform draw per reading.
        self._slot_faults = [f for f in SLOT_FAULTS if self.faults.get(f)]
        self._slot_edges = np.cumsum([self.faults[f] for f in self._slot_faults]) if self._slot_faults else None
        self._order = 0
        self.dropped: Counter[str] = Counter()  # sensor_id -> readings the `drop` fault never sent

    @property
    def rate(self) -> float:
        """Readings per simulated second (without duplicates and gateway extras)."""
        return sum(g.rate for g in self._groups)

    def expected_messages(self) -> int | None:
        """About how many messages the plan sends (None when it has no end)."""
        if self.plan.end_ms is None:
            return None
        readings = self.rate * (self.plan.end_ms - self.plan.start_ms) / 1000
        extra = sum(self.faults.get(f, 0.0) for f in (Fault.DUPLICATE, Fault.UNKNOWN_SENSOR, Fault.CONFLICT))
        return round(readings * (1 + extra))

    def messages(self) -> Iterator[Message]:
        """Every message of the plan, ordered by the simulated time it is due."""
        rate_per_ms = self.rate / 1000 or 1e-9
        chunk_ms = min(max(CHUNK_MESSAGES / rate_per_ms, 1_000.0), 6 * HOUR_MS)
        pending: list[Message] = []  # a heap: late, out-of-order and duplicate messages wait here
        start: float = self.plan.start_ms
        end = self.plan.end_ms
        while end is None or start < end:
            stop = start + chunk_ms if end is None else min(start + chunk_ms, end)
            for message in self.chunk(start, stop):
                heapq.heappush(pending, message)
            while pending and pending[0].emit_ms < stop:
                yield heapq.heappop(pending)
            start = stop
        while pending:  # held-back readings are flushed when the run ends
            yield heapq.heappop(pending)._replace(emit_ms=float(end or 0))

    def chunk(self, start_ms: float, end_ms: float) -> list[Message]:
        """Messages of the readings with `start_ms <= ts < end_ms`, unordered."""
        out: list[Message] = []
        for group in self._groups:
            out.extend(self._group_messages(group, start_ms, end_ms))
        return out

    # -- one kind -----------------------------------------------------------------------------

    def _group_messages(self, group: _KindGroup, start_ms: float, end_ms: float) -> Iterator[Message]:
        member, n, ts = group.slots(start_ms, end_ms)
        if not len(ts):
            return
        batch = group.batch(member, ts)
        values = signals.compute(batch)
        columns = [_column(values[m.name], m) for m in group.kind.metrics]
        rows = list(zip(*columns, strict=True))
        keys = group.keys[member]
        fault_draw = uniform(keys ^ np.uint64(stable_key("slot-fault")), ts)
        if self._slot_edges is not None:
            slot_fault = np.searchsorted(self._slot_edges, fault_draw, side="right")
        else:
            slot_fault = np.zeros(len(ts), dtype=np.int64)
        extra_draw = uniform(keys ^ np.uint64(stable_key("extra-fault")), ts)
        pick_draw = uniform(keys ^ np.uint64(stable_key("fault-pick")), ts)
        duplicate_rate = self.faults.get(Fault.DUPLICATE, 0.0)
        unknown_rate = self.faults.get(Fault.UNKNOWN_SENSOR, 0.0)
        drop_rate = self.faults.get(Fault.DROP, 0.0)
        drop_draw = uniform(keys ^ np.uint64(stable_key("drop")), ts) if drop_rate else None
        conflict_rate = self.faults.get(Fault.CONFLICT, 0.0)
        conflict_draw = uniform(keys ^ np.uint64(stable_key("conflict-fault")), ts)
        n_slot_faults = len(self._slot_faults)
        for i, (s, seq, t) in enumerate(zip(member.tolist(), n.tolist(), ts.tolist(), strict=True)):
            sensor = group.sensors[s]
            if drop_draw is not None and drop_draw[i] < drop_rate:
                self.dropped[sensor.id] += 1
                continue
            period = group.period_ms[s]
            fault = self._slot_faults[slot_fault[i]] if slot_fault[i] < n_slot_faults else None
            payload, category, emit = group.encode(sensor, t, seq, rows[i], fault, pick_draw[i], self.plan), GOOD, t
            if fault is not None:
                category = EXPECTED_CODE[fault].value if fault in EXPECTED_CODE else fault.value
                if fault is Fault.LATE:
                    emit = t + (10 + 50 * pick_draw[i]) * period
                elif fault is Fault.OUT_OF_ORDER:
                    emit = t + 1.5 * period
            message = self._message(emit, sensor.vendor, sensor.topic, payload, sensor.id, t, category)
            yield message
            if category in STORED and extra_draw[i] < duplicate_rate:
                yield message._replace(emit_ms=emit + 0.5 * period, order=self._next(), category=DUPLICATE)
            elif category == GOOD and 1.0 - extra_draw[i] < unknown_rate:
                yield self._unknown_sensor(group, sensor, t, seq, rows[i], emit + 0.25 * period)
            if category == GOOD and conflict_draw[i] < conflict_rate:
                # The same (sensor, ts) sent again later with one value changed: ingest keeps the first.
                changed = group.encode(sensor, t, seq, rows[i], Fault.CONFLICT, pick_draw[i], self.plan)
                yield self._message(
                    emit + 0.75 * period, sensor.vendor, sensor.topic, changed, sensor.id, t, RejectCode.CONFLICT.value
                )

    def _unknown_sensor(
        self, group: _KindGroup, sensor: Sensor, ts: int, seq: int, row: tuple[Any, ...], emit: float
    ) -> Message:
        """A reading for a sensor the registry does not know, forwarded by a misconfigured gateway."""
        city = self.registry.cities[sensor.city]
        number = 900 + int(unit_random(self.plan.seed, sensor.id, ts, "unknown") * 100)
        sensor_id = f"{city.code}-{group.kind.code}-{number}"
        while sensor_id in self.registry.sensors:
            sensor_id += "-x"
        topic = reading_topic(sensor.city, sensor.kind, sensor_id)
        self.info.setdefault(sensor_id, SensorInfo(GATEWAY_VENDOR, sensor.city, sensor.kind, topic))
        payload = group.encode_json(ts, seq, row)
        return self._message(emit, GATEWAY_ACCOUNT, topic, payload, sensor_id, ts, RejectCode.UNKNOWN_SENSOR.value)

    def _message(
        self, emit: float, account: str, topic: str, payload: bytes, sensor_id: str, ts: int, category: str
    ) -> Message:
        return Message(float(emit), self._next(), account, topic, payload, sensor_id, ts, category)

    def _next(self) -> int:
        self._order += 1
        return self._order


def _column(values: F64, metric: Metric) -> list[Any]:
    """Values as JSON-ready Python numbers: whole numbers for counts, else 2 decimals."""
    if metric.unit == "count":
        return np.round(values).astype(np.int64).tolist()
    return np.round(values, 2).tolist()


class _KindGroup:
    """The sensors of one kind: their reporting grid, noise keys and payload templates."""

    def __init__(self, registry: Registry, kind: Kind, sensors: list[Sensor], plan: Plan) -> None:
        self.kind = kind
        self.sensors = sensors
        self.vendor_format = {v.id: v.payload for v in registry.vendors.values()}
        interval_ms = kind.interval_s * 1000.0
        self.period_ms = np.full(len(sensors), interval_ms / plan.time_scale)
        # Each sensor reports at its own phase of the interval (whole seconds at the natural rate).
        phase = np.array([unit_random(plan.seed, s.id, "phase") for s in sensors]) * self.period_ms
        self.phase_ms = np.floor(phase / 1000) * 1000 if plan.time_scale == 1.0 else np.floor(phase)
        self.keys = np.array([stable_key(plan.seed, s.id) for s in sensors], dtype=np.uint64)
        cities = sorted({s.city for s in sensors})
        self.city_keys = np.array([stable_key(plan.seed, "city", s.city) for s in sensors], dtype=np.uint64)
        self.climates = [signals.climate_of(c) for c in cities]
        self.climate_index = np.array([cities.index(s.city) for s in sensors], dtype=np.int64)
        self.thresholds: dict[str, tuple[F64, F64]] = {}
        for name in kind.site_thresholds:
            levels = [registry.threshold(s.site, name) for s in sensors]
            self.thresholds[name] = (
                np.array([t.warning if t else np.nan for t in levels]),
                np.array([t.danger if t else np.nan for t in levels]),
            )
        self.rate = len(sensors) * 1000.0 / float(self.period_ms[0]) if sensors else 0.0
        self._json = '{"seq":%d,"ts":%d,"values":{' + ",".join(f"{_lit(m.name)}:%s" for m in kind.metrics) + "}}"
        # The grid number of each sensor's first reading of the run: `seq` counts from there.
        self.first_n = np.ceil((plan.start_ms - self.phase_ms) / self.period_ms).astype(np.int64)
        self._senml = self._senml_template([m.unit for m in kind.metrics])

    def _senml_template(self, units: Sequence[str]) -> str:
        """`%`-template of a SenML pack: base name, base time, then one value per metric."""
        records = [
            ('{"bn":"%s:","bt":%s,' if i == 0 else "{") + f'"n":{_lit(m.name)},"u":{_lit(unit)},"v":%s}}'
            for i, (m, unit) in enumerate(zip(self.kind.metrics, units, strict=True))
        ]
        return "[" + ",".join(records) + "]"

    def slots(self, start_ms: float, end_ms: float) -> tuple[I64, I64, I64]:
        """(sensor index, seq, ts) of every reading with start_ms <= ts < end_ms; seq counts from the run's start."""
        first = np.ceil((start_ms - self.phase_ms) / self.period_ms).astype(np.int64)
        last = np.ceil((end_ms - self.phase_ms) / self.period_ms).astype(np.int64)
        counts = np.maximum(last - first, 0)
        member = np.repeat(np.arange(len(self.sensors)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        n = first[member] + offsets
        ts = np.round(self.phase_ms[member] + n * self.period_ms[member]).astype(np.int64)
        inside = (ts >= start_ms) & (ts < end_ms)  # rounding at the edges
        return member[inside], (n - self.first_n[member])[inside], ts[inside]

    def batch(self, member: I64, ts: I64) -> signals.Batch:
        return signals.Batch(
            self.kind,
            ts,
            self.period_ms[member] / 1000.0,
            self.keys[member],
            self.city_keys[member],
            self.climate_index[member],
            self.climates,
            {name: (w[member], d[member]) for name, (w, d) in self.thresholds.items()},
        )

    # -- payloads ---------------------------------------------------------------------------------

    def encode_json(self, ts: int, seq: int, row: Sequence[Any]) -> bytes:
        return (self._json % (seq, ts, *row)).encode()

    def encode_senml(self, sensor_id: str, ts: int, row: Sequence[Any]) -> bytes:
        return (self._senml % (sensor_id, _senml_time(ts), *row)).encode()

    def encode(
        self, sensor: Sensor, ts: int, seq: int, row: tuple[Any, ...], fault: Fault | None, pick: float, plan: Plan
    ) -> bytes:
        """The payload of one reading in the vendor's format, with `fault` applied."""
        senml = self.vendor_format.get(sensor.vendor) == "senml"
        if fault is None or fault in (Fault.LATE, Fault.OUT_OF_ORDER):
            return self.encode_senml(sensor.id, ts, row) if senml else self.encode_json(ts, seq, row)
        metric_index = min(int(pick * len(self.kind.metrics)), len(self.kind.metrics) - 1)
        metric = self.kind.metrics[metric_index]
        if fault is Fault.MALFORMED_JSON:
            good = self.encode_senml(sensor.id, ts, row) if senml else self.encode_json(ts, seq, row)
            return good[: max(1, len(good) * 2 // 3)]  # a torn buffer
        if fault is Fault.OUT_OF_RANGE:
            bad = list(row)
            span = metric.max - metric.min
            bad[metric_index] = next((v for v in ERROR_VALUES if not metric.min <= v <= metric.max), metric.max + span)
            return self.encode_senml(sensor.id, ts, bad) if senml else self.encode_json(ts, seq, bad)
        if fault is Fault.UNIT_MISMATCH:  # only SenML carries units, whatever the vendor's usual format
            units = [m.unit for m in self.kind.metrics]
            units[metric_index] = WRONG_UNITS.get(metric.unit, "1" if metric.unit != "1" else "/")
            return (self._senml_template(units) % (sensor.id, _senml_time(ts), *row)).encode()
        if fault is Fault.TS_IN_FUTURE:
            skewed = int(plan.wall_ms(ts)) + FUTURE_SKEW_MS
            return self.encode_senml(sensor.id, skewed, row) if senml else self.encode_json(skewed, seq, row)
        if fault is Fault.CONFLICT:
            other = list(row)
            step = max((metric.max - metric.min) / 100, 1)  # 1 for counts, so they stay whole numbers
            value = other[metric_index]
            other[metric_index] = round(value + step if value + step <= metric.max else value - step, 2)
            return self.encode_senml(sensor.id, ts, other) if senml else self.encode_json(ts, seq, other)
        if fault is Fault.TS_TOO_OLD:
            if senml:
                return self.encode_senml(sensor.id, (CLOCK_RESET_S + ts // 1000 % 31_536_000) * 1000, row)
            return self.encode_json(ts // 1000, seq, row)  # epoch seconds where milliseconds are due
        raise AssertionError(fault)


def _lit(text: str) -> str:
    """A JSON string literal for a `%` template."""
    return json.dumps(text, ensure_ascii=False).replace("%", "%%")


def _senml_time(ts_ms: int) -> str:
    """Epoch seconds with exactly the millisecond digits (no float rounding in the payload)."""
    seconds, millis = divmod(ts_ms, 1000)
    return f"{seconds}.{millis:03d}" if millis else str(seconds)


# -- counting and the manifest --------------------------------------------------------------------


class Tally:
    """What the broker acknowledged, by sensor, hour and category; turns into the manifest."""

    def __init__(self, info: Mapping[str, SensorInfo]) -> None:
        self.info = info
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
