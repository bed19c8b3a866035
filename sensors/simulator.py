"""The fleet simulator: realistic, deterministic readings for every sensor of the registry, as MQTT messages.

`Simulation` turns the registry, a `Plan` (time range, seed, faults, how often
sensors report) and `sensors.signals` into `Message`s in publishing order.
Values and faults are pure functions of (seed, sensor, ts), so a replay of any
range is reproducible and a live run equals a replay of the same hours. Sensors
report on a fixed grid (`ts = phase + n * period`), at their kind's
`interval_s` unless a live `--rate` asks for more. JSON payloads carry `seq`:
the sensor's reading count since the run started (a run is a device restart:
its counter starts at 0), first in the object, so that a torn payload still
names it. Readings the `drop` fault loses skip their number.

Sending the messages (`Publisher`), counting what the broker acknowledged
(`Tally`) and the manifest are in `sensors.publisher`.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from sensors import signals
from sensors.contract import RejectCode, reading_topic
from sensors.errors import SmartcityError
from sensors.faults import EXPECTED_CODE, SLOT_FAULTS, Fault
from sensors.noise import F64, I64, stable_key, uniform, unit_random
from sensors.registry import Kind, Metric, Registry, Sensor

logger = logging.getLogger(__name__)

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
