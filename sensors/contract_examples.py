"""The example messages vendors are shown, each with the outcome ingest gives it.

Built from the registry's first sensor of each kind and judged at one fixed
instant (`EXAMPLE_TS`, received at `EXAMPLE_RECEIVED_MS`), so the guide and the
AsyncAPI document do not change from one build to the next:

    kind_examples(registry, kind)   a JSON object and a SenML pack of a kind
    timestamp_examples(registry)    the accepted forms of time
    reject_examples(registry)       a message for each reject code a vendor can meet
    examples(registry)              all of them, in the order the guide shows them

`Example.expect` is what `Contract.decode` answers (the tests decode every one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sensors.contract import TOPIC_PREFIX, Contract, Decoded, RejectCode
from sensors.registry import Kind, Metric, Registry, Sensor

# The instant every example of the guide is judged at (`contract check --received-at`).
EXAMPLE_TS = datetime(2026, 11, 25, 14, 30, tzinfo=timezone(timedelta(hours=7)))
EXAMPLE_TS_MS = int(EXAMPLE_TS.timestamp()) * 1000
EXAMPLE_RECEIVED_MS = EXAMPLE_TS_MS + 2_000
ACCEPTED = "accepted"


def json_number(value: float) -> int | float:
    """A registry number as JSON shows it: 10.0 is 10."""
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True)
class Example:
    """A message of the guide and the outcome ingest gives it (`accepted` or a reject code)."""

    title: str
    topic: str
    payload: str
    expect: str

    def decode(self, contract: Contract) -> Decoded:
        return contract.decode(self.topic, self.payload.encode(), EXAMPLE_RECEIVED_MS)


def example_value(metric: Metric) -> int | float:
    """A placeholder value of a metric: the middle of its range, to 3 significant digits."""
    middle = (metric.min + metric.max) / 2
    return json_number(float(f"{middle:.3g}"))


def pretty(document: Any) -> str:
    """JSON as the guide shows it: one key of an object, or one SenML record, a line."""
    if isinstance(document, list) and document and all(isinstance(r, dict) for r in document):
        return "[\n" + ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in document) + "\n]"
    if isinstance(document, dict) and document:
        lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in document.items()]
        return "{\n" + ",\n".join(lines) + "\n}"
    return json.dumps(document, ensure_ascii=False)


def first_sensors(registry: Registry) -> dict[str, Sensor]:
    """The first registered sensor of each kind that has one, in registry order."""
    first: dict[str, Sensor] = {}
    for sensor in registry.sensors.values():
        first.setdefault(sensor.kind, sensor)
    return {kind: first[kind] for kind in registry.kinds if kind in first}


def _senml(sensor: Sensor, kind: Kind, values: dict[str, Any]) -> list[dict[str, Any]]:
    units = {m.name: m.unit for m in kind.metrics}
    records: list[dict[str, Any]] = [{"n": name, "u": units[name], "v": v} for name, v in values.items()]
    records[0] = {"bn": f"{sensor.id}:", "bt": EXAMPLE_TS_MS // 1000, **records[0]}
    return records


def kind_examples(registry: Registry, kind: Kind) -> list[Example]:
    """One object and one SenML message carrying every metric of the kind (none if no sensor has it)."""
    sensor = first_sensors(registry).get(kind.id)
    if sensor is None:
        return []
    values = {m.name: example_value(m) for m in kind.metrics}
    return [
        Example("JSON object", sensor.topic, pretty({"ts": EXAMPLE_TS.isoformat(), "values": values, "seq": 1042}),
                ACCEPTED),
        Example("SenML pack", sensor.topic, pretty(_senml(sensor, kind, values)), ACCEPTED),
    ]  # fmt: skip


def timestamp_examples(registry: Registry) -> list[Example]:
    """The accepted forms of time, and a SenML pack of buffered readings."""
    sensor = next(iter(first_sensors(registry).values()), None)
    if sensor is None:
        return []
    kind = registry.kinds[sensor.kind]
    values = {m.name: example_value(m) for m in kind.metrics if m.required} or {
        kind.metrics[0].name: example_value(kind.metrics[0])
    }
    utc = EXAMPLE_TS.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    units = {m.name: m.unit for m in kind.metrics}
    batch: list[dict[str, Any]] = [
        {"n": name, "u": units[name], "t": offset, "v": v} for offset in (-120, -60, 0) for name, v in values.items()
    ]
    batch[0] = {"bn": f"{sensor.id}:", "bt": EXAMPLE_TS_MS // 1000, **batch[0]}
    return [
        Example("Epoch milliseconds", sensor.topic, pretty({"ts": EXAMPLE_TS_MS, "values": values}), ACCEPTED),
        Example("RFC 3339 in UTC, with milliseconds", sensor.topic, pretty({"ts": utc, "values": values}), ACCEPTED),
        Example("Three buffered readings in one SenML pack (bt + t)", sensor.topic, pretty(batch), ACCEPTED),
    ]


def reject_examples(registry: Registry) -> list[Example]:
    """A message for each reject code a vendor can meet, built from the registry's first sensor."""
    first = first_sensors(registry)
    if not first:
        return []
    sensor = next(iter(first.values()))
    kind = registry.kinds[sensor.kind]
    metric = kind.metrics[0]
    value = example_value(metric)
    topic = sensor.topic
    ts = EXAMPLE_TS.isoformat()

    def obj(**fields: Any) -> str:
        return pretty(fields)

    other_kind = next((k for k in first if k != sensor.kind), None)
    other_unit = next((m.unit for k in registry.kinds.values() for m in k.metrics if m.unit != metric.unit), "1")
    local_time = EXAMPLE_TS.replace(tzinfo=None).isoformat(sep=" ")
    unregistered = f"{sensor.id[:50]}-unregistered"
    out: list[Example] = [
        Example("Topic without the sensor id", f"{TOPIC_PREFIX}{sensor.city}/{sensor.kind}",
                obj(ts=ts, values={metric.name: value}), RejectCode.BAD_TOPIC),
        Example("A trailing comma", topic, f'{{"ts": "{ts}", "values": {{"{metric.name}": {value},}}}}',
                RejectCode.INVALID_JSON),
        Example("A bare value instead of an object", topic, json.dumps(value), RejectCode.NOT_AN_OBJECT),
        Example("A sensor id that is not registered", f"{TOPIC_PREFIX}{sensor.city}/{sensor.kind}/{unregistered}",
                obj(ts=ts, values={metric.name: value}), RejectCode.UNKNOWN_SENSOR),
        Example("No time", topic, obj(values={metric.name: value}), RejectCode.MISSING_TS),
        Example("Local time without an offset", topic, obj(ts=local_time, values={metric.name: value}),
                RejectCode.INVALID_TS),
        Example("SenML time relative to 'now'", topic,
                pretty([{"bn": f"{sensor.id}:", "n": metric.name, "u": metric.unit, "t": -60, "v": value}]),
                RejectCode.INVALID_TS),
        Example("A clock one hour fast", topic,
                obj(ts=(EXAMPLE_TS + timedelta(hours=1)).isoformat(), values={metric.name: value}),
                RejectCode.TS_IN_FUTURE),
        Example("Epoch seconds instead of milliseconds", topic,
                obj(ts=EXAMPLE_TS_MS // 1000, values={metric.name: value}), RejectCode.TS_TOO_OLD),
        Example("'value' instead of 'values'", topic, obj(ts=ts, value={metric.name: value}),
                RejectCode.MISSING_VALUES),
        Example("A metric name in upper case", topic, obj(ts=ts, values={metric.name.upper(): value}),
                RejectCode.UNKNOWN_METRIC),
        Example("A number sent as a string", topic, obj(ts=ts, values={metric.name: str(value)}),
                RejectCode.INVALID_VALUE),
        Example("A value outside the metric's physical range", topic,
                obj(ts=ts, values={metric.name: json_number(metric.max + (metric.max - metric.min))}),
                RejectCode.OUT_OF_RANGE),
        Example("A SenML unit other than the metric's", topic,
                pretty([{"bn": f"{sensor.id}:", "bt": EXAMPLE_TS_MS // 1000, "n": metric.name, "u": other_unit,
                         "v": value}]), RejectCode.UNIT_MISMATCH),
    ]  # fmt: skip
    if other_kind is not None:
        out.insert(4, Example("The topic of another kind", f"{TOPIC_PREFIX}{sensor.city}/{other_kind}/{sensor.id}",
                              obj(ts=ts, values={metric.name: value}), RejectCode.SENSOR_TOPIC_MISMATCH))  # fmt: skip
    return out


def examples(registry: Registry) -> list[Example]:
    """Every runnable example of the guide, in the order it shows them."""
    kinds = [e for kind in registry.kinds.values() for e in kind_examples(registry, kind)]
    return kinds + timestamp_examples(registry) + reject_examples(registry)
