"""The vendor contract as documents: AsyncAPI 3.0, JSON Schemas and the examples of docs/vendors.md.

Vendors never see our code, only the broker, the contract and the reject topic.
Everything they are given is generated here from the registry and from the
constants of `sensors.contract`, so it cannot drift from what ingest enforces:

    asyncapi_document(registry)   AsyncAPI 3.0: a channel per sensor kind, the reject
                                  channels, send/receive operations, MQTT bindings
    object_schema(kind)           JSON Schema (2020-12) of `{"ts", "values", "seq"}`
    senml_schema(kind)            JSON Schema (2020-12) of a SenML pack (RFC 8428)
    reject_schema()               JSON Schema of the message on the reject topic
    examples(registry)            every example of docs/vendors.md with its outcome
    render_doc(text, registry)    docs/vendors.md with its generated sections redone

The schemas use only keywords that mean the same in JSON Schema draft-07 and
2020-12, so the AsyncAPI document embeds them unchanged under AsyncAPI's
mandatory draft-07 schema format and every AsyncAPI tool reads them right.
Some rules of the decoder are out of reach of any JSON Schema (the clock, the
topic, the bytes, SenML records that inherit base fields); `SCHEMA_LIMITS`
lists them, the guide prints them and the tests exclude exactly those.

This module only describes; `Contract.decode` stays the one implementation of
the rules, and every example outcome shown to vendors is computed by it.

Size: about 950 lines, most of it the generated documents' text and the per-code examples; the
seam is AsyncAPI/JSON Schema generation vs. the vendor guide's examples, not yet cut.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import yaml

from sensors.contract import (
    DEFAULT_MAX_AGE_MS,
    EPOCH_SECONDS_HINT_BELOW,
    MALFORMED_REJECT_TOPIC,
    MAX_FUTURE_MS,
    MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES,
    REJECT_PAYLOAD_BYTES,
    REJECT_PREFIX,
    SENML_RELATIVE_LIMIT_S,
    SEQ_MAX,
    TOPIC_PREFIX,
    Accepted,
    Contract,
    Decoded,
    RejectCode,
    Rejected,
    format_window,
    reject_notice,
    reject_topic,
)
from sensors.errors import SmartcityError
from sensors.registry import Kind, Metric, Registry, Sensor
from sensors.registry.model import SENSOR_ID_PATTERN

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_SCHEMA_FORMAT = "application/schema+json;version=draft-07"
MQTT_BINDING_VERSION = "0.2.0"
JSON_CONTENT_TYPE = "application/json"
SENML_CONTENT_TYPE = "application/senml+json"
CONTRACT_VERSION = "1.0.0"

# Bounds the decoder puts on numbers, whatever the clock says (sensors/contract.py).
MAX_ABS_TS_MS = 10**15
MAX_ABS_SENML_TIME_S = 10**12

# The instant every example of the guide is judged at (`contract check --received-at`).
EXAMPLE_TS = datetime(2026, 11, 25, 14, 30, tzinfo=timezone(timedelta(hours=7)))
EXAMPLE_TS_MS = int(EXAMPLE_TS.timestamp()) * 1000
EXAMPLE_RECEIVED_MS = EXAMPLE_TS_MS + 2_000
ACCEPTED = "accepted"
# What ingest publishes on the reject topic (the spool's record also keeps sensor_id and vendor).
REJECT_MESSAGE_FIELDS = ("code", "detail", "topic", "received_at", "payload_b64")


class ContractSpecError(SmartcityError):
    """A generated contract document cannot be written or is out of date; the message names the file."""


# -- regular expressions (ECMA-262 and Python agree on every construct used) -------------

_SENSOR = SENSOR_ID_PATTERN.removeprefix("^").removesuffix("$")
# A SenML name prefix the decoder resolves to the topic's sensor: `...:{sensor_id}:` (or an
# empty owner before the last ':'), or `.../{sensor_id}/` when the name has no ':' at all.
# Which sensor it names is checked against the topic by ingest only (SCHEMA_LIMITS).
_NAME_PREFIX = rf"(?:(?:[\s\S]*[:/])?(?:{_SENSOR})?:|(?:[^:]*/)?(?:{_SENSOR})?/)"
# RFC 3339 date-time with an offset, as ingest accepts it: ' ', 't' and 'z' allowed, any
# number of fraction digits, real calendar dates (leap years included), offsets below 24 h.
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
RFC3339_PATTERN = (
    rf"^(?:(?!0000)[0-9]{{4}}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
    r"[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)


def metric_name_pattern(metrics: list[Metric]) -> str:
    """A SenML name (`bn` + `n`) that resolves to one of `metrics`."""
    return rf"^{_NAME_PREFIX}?(?:{'|'.join(m.name for m in metrics)})$"


# -- JSON Schemas ------------------------------------------------------------------------


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _metric_schema(metric: Metric) -> dict[str, Any]:
    required = "; required in every reading" if metric.required else ""
    return {
        "title": metric.name,
        "description": f"{metric.description}, in {metric.unit} ({_num(metric.min)}..{_num(metric.max)}){required}.",
        "type": "number",
        "minimum": _num(metric.min),
        "maximum": _num(metric.max),
        "x-unit": metric.unit,
    }


_ABSOLUTE_SENML_TIME = {
    "anyOf": [
        {"minimum": SENML_RELATIVE_LIMIT_S, "maximum": MAX_ABS_SENML_TIME_S},
        {"minimum": -MAX_ABS_SENML_TIME_S, "maximum": -SENML_RELATIVE_LIMIT_S},
    ]
}


def object_schema(kind: Kind) -> dict[str, Any]:
    """JSON Schema of the object payload `{"ts": ..., "values": {...}, "seq": n}` of one kind."""
    required = [m.name for m in kind.metrics if m.required]
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"{kind.name.en} reading ({kind.id}, JSON object)",
        "description": f"One reading of a {kind.id} sensor, published on "
        f"{TOPIC_PREFIX}{{city}}/{kind.id}/{{sensor_id}}. Rules that depend on the clock, the topic or the "
        "raw bytes are checked by ingest only (docs/vendors.md, 'What the JSON Schemas cannot check').",
        "type": "object",
        "required": ["ts", "values"],
        "properties": {
            "ts": {
                "description": "When the reading was taken: epoch milliseconds, or RFC 3339 with an offset. "
                f"At most {MAX_FUTURE_MS // 60_000} min ahead of the broker's clock, not older than the raw retention.",
                "anyOf": [
                    {"type": "number", "minimum": -MAX_ABS_TS_MS, "maximum": MAX_ABS_TS_MS},
                    {"type": "string", "pattern": RFC3339_PATTERN},
                ],
                "examples": [EXAMPLE_TS.isoformat(), EXAMPLE_TS_MS],
            },
            "values": {
                "description": "Metric name -> number, in the metric's unit."
                + (f" Required: {', '.join(required)}." if required else ""),
                "type": "object",
                "minProperties": 1,
                "required": required,
                "additionalProperties": False,
                "properties": {m.name: _metric_schema(m) for m in kind.metrics},
            },
            "seq": {
                "description": "Optional message counter of the sensor (0 to 2^63-1), one more for each reading; "
                "a gap shows readings lost on the way, a drop to 0 a restart.",
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": SEQ_MAX,
            },
            "sensor_id": {
                "description": "Optional; when given it must be the sensor id of the topic.",
                "type": ["string", "null"],
                "pattern": SENSOR_ID_PATTERN,
            },
        },
    }


def senml_schema(kind: Kind) -> dict[str, Any]:
    """JSON Schema of a SenML pack (RFC 8428, JSON) of one kind: names resolve to metrics, units must match."""
    metrics = list(kind.metrics)
    record: dict[str, Any] = {
        "type": "object",
        "required": ["n", "v"],
        "properties": {
            "bn": {
                "description": "Base name: '{sensor_id}:' or a prefix ending in it; n is then the metric.",
                "type": "string",
                "pattern": rf"^(?:{_NAME_PREFIX})?$",
            },
            "bt": {"description": "Base time, absolute epoch seconds.", "type": "number", **_ABSOLUTE_SENML_TIME},
            "bu": {"description": "Base unit of the records that have no 'u'.", "type": "string"},
            "bv": {"description": "Base value, added to each v.", "type": "number"},
            "n": {
                "description": f"The metric ({', '.join(m.name for m in metrics)}), after the base name if any.",
                "type": "string",
                "pattern": metric_name_pattern(metrics),
            },
            "u": {"description": "The metric's unit (SenML symbol).", "type": "string"},
            "v": {"description": "The value, a number.", "type": "number"},
            "t": {"description": "Time: absolute epoch seconds, or seconds after bt.", "type": "number"},
        },
        "allOf": [
            {
                "if": {"required": ["n"], "properties": {"n": {"pattern": metric_name_pattern([m])}}},
                "then": {
                    "properties": {
                        "u": {"const": m.unit},
                        "v": {k: v for k, v in _metric_schema(m).items() if k in ("minimum", "maximum")},
                    }
                },
            }
            for m in metrics
        ],
    }
    units = sorted({m.unit for m in metrics})
    rules: list[dict[str, Any]] = [
        {  # without a base time every record carries its own absolute time
            "if": {"contains": {"required": ["bt"]}},
            "else": {"items": {"required": ["t"], "properties": {"t": _ABSOLUTE_SENML_TIME}}},
        },
        {  # a base unit that is no unit of this kind: every record must name its own
            "if": {"contains": {"required": ["bu"], "properties": {"bu": {"not": {"enum": units}}}}},
            "then": {"items": {"required": ["u"]}},
        },
    ]
    for unit in units:
        others = [m for m in metrics if m.unit != unit]
        if others:  # records of metrics in another unit must override the base unit
            rules.append(
                {
                    "if": {"contains": {"required": ["bu"], "properties": {"bu": {"const": unit}}}},
                    "then": {
                        "items": {
                            "if": {"required": ["n"], "properties": {"n": {"pattern": metric_name_pattern(others)}}},
                            "then": {"required": ["u"]},
                        }
                    },
                }
            )
    required = [m for m in metrics if m.required]
    if required:  # one instant (no record has 't'): the pack is one reading and needs them
        rules.append(
            {
                "if": {"not": {"contains": {"required": ["t"]}}},
                "then": {
                    "allOf": [
                        {"contains": {"required": ["n"], "properties": {"n": {"pattern": metric_name_pattern([m])}}}}
                        for m in required
                    ]
                },
            }
        )
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"{kind.name.en} reading ({kind.id}, SenML pack)",
        "description": f"SenML (RFC 8428) readings of a {kind.id} sensor, published on "
        f"{TOPIC_PREFIX}{{city}}/{kind.id}/{{sensor_id}}. Records at the same time form one reading. "
        "Base fields (bn, bt, bu, bv) belong in the first record; rules across records and those that "
        "depend on the clock or the topic are checked by ingest only "
        "(docs/vendors.md, 'What the JSON Schemas cannot check').",
        "type": "array",
        "minItems": 1,
        "items": record,
        "allOf": rules,
    }


def reject_schema() -> dict[str, Any]:
    """JSON Schema of the message ingest publishes on the reject topic (QoS 1)."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "Rejected message",
        "description": "Why a message was refused. Published on the reject topic of the message's topic.",
        "type": "object",
        "required": list(REJECT_MESSAGE_FIELDS),
        "properties": {
            "code": {"description": "Machine-readable reason.", "enum": [code.value for code in RejectCode]},
            "detail": {"description": "What exactly is wrong, for a person.", "type": "string"},
            "topic": {"description": "The topic the message was published on.", "type": "string"},
            "received_at": {"description": "When the broker delivered it to ingest (RFC 3339, UTC).", "type": "string"},
            "payload_b64": {
                "description": f"The payload, base64, cut at its first {REJECT_PAYLOAD_BYTES} bytes.",
                "type": "string",
                "contentEncoding": "base64",
                "maxLength": -(-REJECT_PAYLOAD_BYTES // 3) * 4,
            },
        },
    }


def schema_files(registry: Registry) -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every kind and the reject message."""
    files: dict[str, dict[str, Any]] = {}
    for kind in registry.kinds.values():
        files[f"{kind.id}.object.schema.json"] = object_schema(kind)
        files[f"{kind.id}.senml.schema.json"] = senml_schema(kind)
    files["reject.schema.json"] = reject_schema()
    return files


# -- what a JSON Schema cannot check (printed in the guide, excluded by the tests) ---------

SCHEMA_LIMITS: list[tuple[str, str]] = [
    (
        "The clock",
        f"`ts_in_future` (more than {MAX_FUTURE_MS // 60_000} min ahead) and `ts_too_old` (older than the "
        f"acceptance window, {format_window(DEFAULT_MAX_AGE_MS)} by default) compare the time with the moment the "
        "broker delivered the message.",
    ),
    (
        "What is stored",
        "`conflict`: a reading for a sensor and time that is already stored with other values; only the platform "
        "knows what it stored.",
    ),
    (
        "The topic",
        "the topic itself (`bad_topic`, `unknown_sensor`, `sensor_topic_mismatch`): a schema sees only the payload; "
        "a `sensor_id` in the object, or the sensor named in a SenML name, must be the topic's sensor.",
    ),
    (
        "The bytes",
        f"the {MAX_PAYLOAD_BYTES}-byte limit, UTF-8 and JSON syntax (`payload_too_large`, `invalid_json`); "
        "a schema validates a parsed document.",
    ),
    (
        "Integers written with a fraction",
        '`"seq": 1.0` is an integer to JSON Schema; ingest wants `1`.',
    ),
    (
        "SenML across records",
        "base fields are resolved record by record (RFC 8428 section 4.6): a name split between `bn` and `n` "
        "other than `{prefix}:` + metric, a `bt` + `t` sum below 2^28 s (relative), a `bv` + `v` sum out of "
        "range, base fields set after the first record, a metric twice at one instant, and, in packs whose "
        "records carry `t`, a required metric missing at one instant.",
    ),
    (
        "Leniencies of ingest",
        "ingest accepts a few things the schemas refuse (never the other way round): SenML fields set to "
        "`null`, and SenML base fields of the wrong JSON type that no record uses.",
    ),
]


# -- examples --------------------------------------------------------------------------


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
    return _num(float(f"{middle:.3g}"))


def pretty(document: Any) -> str:
    """JSON as the guide shows it: one key of an object, or one SenML record, a line."""
    if isinstance(document, list) and document and all(isinstance(r, dict) for r in document):
        return "[\n" + ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in document) + "\n]"
    if isinstance(document, dict) and document:
        lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in document.items()]
        return "{\n" + ",\n".join(lines) + "\n}"
    return json.dumps(document, ensure_ascii=False)


def _first_sensors(registry: Registry) -> dict[str, Sensor]:
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
    sensor = _first_sensors(registry).get(kind.id)
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
    sensor = next(iter(_first_sensors(registry).values()), None)
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
    first = _first_sensors(registry)
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
                obj(ts=ts, values={metric.name: _num(metric.max + (metric.max - metric.min))}),
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


# -- AsyncAPI ----------------------------------------------------------------------------


def _embedded(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema under AsyncAPI's draft-07 format: the same keywords, without the 2020-12 `$schema`."""
    return {"schemaFormat": ASYNCAPI_SCHEMA_FORMAT, "schema": {k: v for k, v in schema.items() if k != "$schema"}}


def _mqtt_message_binding(content_type: str) -> dict[str, Any]:
    return {"mqtt": {"payloadFormatIndicator": 1, "contentType": content_type, "bindingVersion": MQTT_BINDING_VERSION}}


def contract_digest(registry: Registry) -> str:
    """Changes whenever a schema vendors validate against changes."""
    text = json.dumps(schema_files(registry), sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:12]


def asyncapi_document(registry: Registry, vendor: str | None = None, host: str = "localhost") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the contract, seen from a sensor: it sends readings and receives rejects.

    With `vendor`, only that vendor's kinds, cities and sensors are listed (its own document).
    """
    if vendor is not None and vendor not in registry.vendors:
        known = ", ".join(sorted(registry.vendors))
        raise ContractSpecError(f"--vendor: unknown vendor {vendor!r} (known: {known})")
    fleet = registry.sensors_of(vendor=vendor)
    by_kind: dict[str, list[Sensor]] = {}
    for sensor in fleet:
        by_kind.setdefault(sensor.kind, []).append(sensor)
    kinds = [k for k in registry.kinds.values() if k.id in by_kind or vendor is None]
    examples_by_kind = {k.id: kind_examples(registry, k) for k in kinds}
    sensor_id_text = f"A registered sensor id: `{SENSOR_ID_PATTERN}`."

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for kind in kinds:
        sensors = by_kind.get(kind.id, [])
        cities = sorted({s.city for s in sensors})
        sensor_param: dict[str, Any] = {"description": sensor_id_text}
        if vendor is not None:
            sensor_param["enum"] = [s.id for s in sensors]
        elif sensors:
            sensor_param["examples"] = [s.id for s in sensors[:3]]
        city_param: dict[str, Any] = {"description": "The city of the sensor, as registered."}
        if cities:
            city_param["enum"] = cities
        found = {e.title: json.loads(e.payload) for e in examples_by_kind[kind.id]}
        for form, schema, content_type, example in (
            ("object", object_schema(kind), JSON_CONTENT_TYPE, found.get("JSON object")),
            ("senml", senml_schema(kind), SENML_CONTENT_TYPE, found.get("SenML pack")),
        ):
            message: dict[str, Any] = {
                "name": f"{kind.id}.{form}",
                "title": schema["title"],
                "contentType": content_type,
                "payload": _embedded(schema),
                "bindings": _mqtt_message_binding(content_type),
            }
            if example is not None:
                message["examples"] = [{"name": f"{kind.id}-{form}", "payload": example}]
            messages[f"{kind.id}.{form}"] = message
        channels[kind.id] = {
            "address": f"{TOPIC_PREFIX}{{city}}/{kind.id}/{{sensor_id}}",
            "title": f"{kind.name.en} readings",
            "description": f"Readings of {kind.id} sensors ({', '.join(m.name for m in kind.metrics)}), "
            f"expected every {kind.interval_s} s. A JSON object or a SenML pack, at most {MAX_PAYLOAD_BYTES} bytes.",
            "parameters": {"city": city_param, "sensor_id": sensor_param},
            "messages": {form: {"$ref": f"#/components/messages/{kind.id}.{form}"} for form in ("object", "senml")},
        }
        operations[f"send_{kind.id}"] = {
            "action": "send",
            "title": f"Publish a {kind.id} reading",
            "summary": "QoS 1, not retained; resend whatever is unacknowledged after a reconnect.",
            "channel": {"$ref": f"#/channels/{kind.id}"},
            "messages": [{"$ref": f"#/channels/{kind.id}/messages/{form}"} for form in ("object", "senml")],
            "bindings": {"mqtt": {"qos": 1, "retain": False, "bindingVersion": MQTT_BINDING_VERSION}},
        }

    messages["reject"] = {
        "name": "reject",
        "title": "Rejected message",
        "contentType": JSON_CONTENT_TYPE,
        "payload": _embedded(reject_schema()),
        "bindings": _mqtt_message_binding(JSON_CONTENT_TYPE),
    }
    samples = [m for m in (_reject_message(registry, e) for e in reject_examples(registry)) if m is not None]
    if samples:
        messages["reject"]["examples"] = [{"name": f"reject-{m['code']}", "payload": m} for m in samples[:3]]
    all_cities = sorted({s.city for s in fleet}) or sorted(registry.cities)
    channels["rejects"] = {
        "address": f"{REJECT_PREFIX}{{city}}/{{kind}}/{{sensor_id}}",
        "title": "Rejected messages",
        "description": "Every message ingest refuses is republished here (QoS 1), on the topic of its sensor, "
        "with the reason. Your account may read the reject topics of your own sensors.",
        "parameters": {
            "city": {"description": "City of the refused message's topic.", "enum": all_cities},
            "kind": {"description": "Kind of the refused message's topic.", "enum": [k.id for k in kinds]},
            "sensor_id": {"description": sensor_id_text},
        },
        "messages": {"reject": {"$ref": "#/components/messages/reject"}},
    }
    channels["rejects_malformed"] = {
        "address": MALFORMED_REJECT_TOPIC,
        "title": "Rejected messages whose topic does not parse",
        "description": "Rejections of messages whose topic is not a reading topic (`bad_topic`). For the "
        "platform's operators: vendor accounts cannot publish such topics, nor read this one.",
        "messages": {"reject": {"$ref": "#/components/messages/reject"}},
    }
    operations["receive_rejects"] = {
        "action": "receive",
        "title": "Learn why a message was refused",
        "summary": "Subscribe (QoS 1) to the reject topics of your sensors.",
        "channel": {"$ref": "#/channels/rejects"},
        "messages": [{"$ref": "#/channels/rejects/messages/reject"}],
        "bindings": {"mqtt": {"qos": 1, "bindingVersion": MQTT_BINDING_VERSION}},
    }

    server_binding = {"mqtt": {"cleanSession": False, "keepAlive": 60, "bindingVersion": MQTT_BINDING_VERSION}}
    security = [{"$ref": "#/components/securitySchemes/vendorAccount"}]
    title = "smartcity sensor contract" + (f" for {registry.vendors[vendor].name}" if vendor else "")
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": f"{CONTRACT_VERSION}+{contract_digest(registry)}",
            "description": "How city sensors publish readings to the smartcity platform (Phuket and Chiang Mai "
            "smart-city pilots) and how they learn why a message was refused. Generated from the sensor "
            "registry by `smartcity contract build`; the guide is docs/vendors.md.",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": JSON_CONTENT_TYPE,
        "servers": {
            "production": {
                "host": "{host}:8883",
                "protocol": "secure-mqtt",
                "title": "The city's broker, MQTT 3.1.1 or 5 over TLS",
                "variables": {"host": {"description": "Host name the city operator gives you.", "default": host}},
                "security": security,
                "bindings": server_binding,
            },
            "local": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "title": "A local test stack (`smartcity stack up`), plain MQTT on loopback",
                "security": security,
                "bindings": server_binding,
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "securitySchemes": {
                "vendorAccount": {
                    "type": "userPassword",
                    "description": "One broker account per vendor: user name = vendor id, password issued by the "
                    "city operator. It may publish only to its own sensors' topics.",
                }
            },
        },
    }


def reject_message(topic: str, payload: bytes, rejected: Rejected, received_ms: int) -> dict[str, Any]:
    """The message published on the reject topic: the fields of DESIGN.md, not the audit-only ones."""
    notice = reject_notice(topic, payload, rejected, received_ms)
    return {field: notice[field] for field in REJECT_MESSAGE_FIELDS}


def _reject_message(registry: Registry, example: Example) -> dict[str, Any] | None:
    """The message ingest would publish on the reject topic for an example (None if accepted)."""
    decoded = example.decode(Contract(registry))
    if isinstance(decoded, Accepted):
        return None
    return reject_message(example.topic, example.payload.encode(), decoded, EXAMPLE_RECEIVED_MS)


class _PlainDumper(yaml.SafeDumper):
    """YAML without &anchors and *aliases for objects used twice: plainer for every AsyncAPI tool."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def spec_files(registry: Registry, vendor: str | None = None, host: str = "localhost") -> dict[str, str]:
    """Relative path -> text of everything `smartcity contract build` writes."""
    document = asyncapi_document(registry, vendor, host)
    text = yaml.dump(document, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=100)
    files = {"asyncapi.yaml": text}
    for name, schema in schema_files(registry).items():
        files[f"schemas/{name}"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return files


# -- docs/vendors.md ---------------------------------------------------------------------

REJECT_HELP: dict[RejectCode, tuple[str, str]] = {
    RejectCode.BAD_TOPIC: (
        "The topic is not `smartcity/v1/{city}/{kind}/{sensor_id}`.",
        "Publish each sensor on the topic listed for it (`smartcity sensors list`).",
    ),
    RejectCode.PAYLOAD_TOO_LARGE: (
        f"The payload is over {MAX_PAYLOAD_BYTES} bytes.",
        "Send fewer readings per SenML pack, or one message per reading.",
    ),
    RejectCode.INVALID_JSON: (
        "The payload is not UTF-8 JSON (a trailing comma, single quotes, cut-off text...).",
        "Serialize with a JSON library; never build JSON by string concatenation.",
    ),
    RejectCode.NOT_AN_OBJECT: (
        "The payload is JSON but neither an object nor a SenML array of objects.",
        'Wrap values in `{"ts": ..., "values": {...}}` or send a SenML pack.',
    ),
    RejectCode.UNKNOWN_SENSOR: (
        "The sensor id of the topic is not registered.",
        "Ask the city operator to register the sensor before it publishes.",
    ),
    RejectCode.SENSOR_TOPIC_MISMATCH: (
        "The topic's city or kind is not the sensor's, or the payload names another sensor.",
        "Use the sensor's own topic; drop or correct `sensor_id` / the SenML base name.",
    ),
    RejectCode.MISSING_TS: ("The reading has no time.", "Add `ts` (object) or `bt`/`t` (SenML)."),
    RejectCode.INVALID_TS: (
        "The time is not epoch milliseconds, RFC 3339 with an offset, or absolute SenML seconds.",
        "Send `2026-11-25T14:30:00+07:00` or milliseconds; in SenML, absolute epoch seconds.",
    ),
    RejectCode.TS_IN_FUTURE: (
        f"The time is more than {MAX_FUTURE_MS // 60_000} min ahead of the broker's clock.",
        "Synchronise the sensor's clock (NTP); send UTC or a correct offset.",
    ),
    RejectCode.TS_TOO_OLD: (
        "The time is older than the acceptance window ("
        + format_window(DEFAULT_MAX_AGE_MS)
        + " by default; the detail states the platform's), or looks like epoch seconds.",
        "Send milliseconds; readings buffered longer than the window cannot be stored.",
    ),
    RejectCode.MISSING_VALUES: (
        "No values, an empty `values`, a SenML record without a name, or a required metric missing.",
        "Send at least one metric, and every required metric of the kind.",
    ),
    RejectCode.UNKNOWN_METRIC: ("A metric name is not one of the kind's.", "Use the metric names of the kind's table."),
    RejectCode.INVALID_VALUE: (
        "A value is not a finite number (string, null, boolean, NaN), `seq` is not an integer "
        "from 0 to 2^63-1, a SenML record has no `v`, or a metric appears twice for one time.",
        "Send plain JSON numbers; one value per metric and time.",
    ),
    RejectCode.OUT_OF_RANGE: (
        "A value is outside the metric's physical range.",
        "Check the sensor and the unit; the ranges are in the kind's table.",
    ),
    RejectCode.UNIT_MISMATCH: (
        "A SenML unit (`u` or `bu`) is not the metric's unit.",
        "Convert to the metric's unit, or leave `u` out.",
    ),
    RejectCode.CONFLICT: (
        "A reading for this sensor and time is already stored with other values; the first one is kept "
        "(the same values again are a harmless duplicate and accepted).",
        "Never reuse a time for a new value; a correction needs the city operator.",
    ),
}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _received_at() -> str:
    return datetime.fromtimestamp(EXAMPLE_RECEIVED_MS / 1000, UTC).isoformat().replace("+00:00", "Z")


def example_block(example: Example) -> str:
    """A fenced block whose info string says what `contract check` must answer (the tests run them)."""
    info = f"json example topic={example.topic} expect={example.expect} received-at={_received_at()}"
    return f"Topic `{example.topic}`\n\n```{info}\n{example.payload}\n```"


def _section_limits(registry: Registry) -> str:
    rows = [
        ["Payload size", f"at most {MAX_PAYLOAD_BYTES} bytes (16 KiB) of UTF-8 JSON", "`payload_too_large`"],
        ["MQTT packet", f"at most {MAX_PACKET_BYTES} bytes (topic, payload and properties); the broker closes the "
         "connection on a larger one, without a PUBACK: it is neither stored nor rejected, so resend it smaller",
         "none (disconnect)"],
        ["Clock ahead", f"`ts` at most {MAX_FUTURE_MS // 60_000} min after the broker received it", "`ts_in_future`"],
        ["Clock behind", f"`ts` within the acceptance window ({format_window(DEFAULT_MAX_AGE_MS)} by default: "
         "a gateway's buffer through a long outage; the `ts_too_old` detail states the platform's)", "`ts_too_old`"],
        ["History", "a (sensor, `ts`) already stored keeps its first values; the same values again are a "
         "duplicate (accepted), other values are refused", "`conflict`"],
        ["Epoch milliseconds", f"a number `ts` is milliseconds, at most {MAX_ABS_TS_MS:,} either side of 1970; "
         f"below {EPOCH_SECONDS_HINT_BELOW:,} (2001-09-09) it is probably seconds, and too old",
         "`invalid_ts`, `ts_too_old`"],
        ["SenML time", f"absolute epoch seconds; below 2^28 ({SENML_RELATIVE_LIMIT_S}) s is relative and refused",
         "`invalid_ts`"],
        ["Sensor id", f"`{SENSOR_ID_PATTERN}`", "`bad_topic`"],
        ["Reject message", f"carries the first {REJECT_PAYLOAD_BYTES} bytes of the payload, base64", ""],
        ["QoS / retain", "QoS 1 (QoS 0 is accepted, but lost on any outage); never retain", ""],
    ]  # fmt: skip
    return _table(["Limit", "Value", "Reject code"], rows)


def _section_kinds(registry: Registry) -> str:
    parts: list[str] = []
    for kind in registry.kinds.values():
        sensors = registry.sensors_of(kind=kind.id)
        cities = sorted({s.city for s in sensors})
        rows = [
            [f"`{m.name}`", f"`{m.unit}`", str(_num(m.min)), str(_num(m.max)), "yes" if m.required else "",
             m.description]
            for m in kind.metrics
        ]  # fmt: skip
        parts.append(
            f"### {kind.name.en} (`{kind.id}`)\n\n"
            f"Topic `{TOPIC_PREFIX}{{city}}/{kind.id}/{{sensor_id}}`"
            + (f" (cities: {', '.join(cities)})" if cities else "")
            + f"; one reading every {kind.interval_s} s. JSON Schemas: `schemas/{kind.id}.object.schema.json`, "
            f"`schemas/{kind.id}.senml.schema.json`.\n\n"
            + _table(["Metric", "Unit", "Min", "Max", "Required", "Description"], rows)
        )
        for example in kind_examples(registry, kind):
            parts.append(f"{example.title}:\n\n" + example_block(example))
    return "\n\n".join(parts)


# Placeholders of the connect examples: what the operator hands over (tests substitute them).
BROKER_HOST_PLACEHOLDER = "BROKER_HOST"
PASSWORD_PLACEHOLDER = "YOUR_PASSWORD"
CA_FILE_NAME = "ca.crt"
MQTTS_PORT = 8883


def _section_connect(registry: Registry) -> str:
    """A `mosquitto_pub` line and a paho-mqtt script that publish one reading over TLS (a test runs both)."""
    sensor = next(iter(_first_sensors(registry).values()), None)
    if sensor is None:
        return "No sensor is registered yet."
    kind = registry.kinds[sensor.kind]
    values = {m.name: example_value(m) for m in kind.metrics if m.required} or {
        kind.metrics[0].name: example_value(kind.metrics[0])
    }
    payload = json.dumps({"ts": EXAMPLE_TS.isoformat(), "values": values})
    client_id = f"{sensor.vendor}-gw-01"
    shell = (
        f"mosquitto_pub -h {BROKER_HOST_PLACEHOLDER} -p {MQTTS_PORT} --cafile {CA_FILE_NAME} \\\n"
        f"  -u {sensor.vendor} -P '{PASSWORD_PLACEHOLDER}' -i {client_id} -V mqttv5 -q 1 \\\n"
        f"  -t {sensor.topic} \\\n"
        f"  -m '{payload}'"
    )
    python = f"""import json
from datetime import datetime, timezone

import paho.mqtt.client as mqtt  # paho-mqtt >= 2
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="{client_id}", protocol=mqtt.MQTTv5)
client.username_pw_set("{sensor.vendor}", "{PASSWORD_PLACEHOLDER}")
client.tls_set(ca_certs="{CA_FILE_NAME}")  # verifies the broker's certificate and its host name
session = Properties(PacketTypes.CONNECT)
session.SessionExpiryInterval = 24 * 3600  # persistent session: the broker keeps it a day
client.connect("{BROKER_HOST_PLACEHOLDER}", {MQTTS_PORT}, keepalive=60, clean_start=False, properties=session)
client.loop_start()

reading = {{"ts": datetime.now(timezone.utc).isoformat(), "values": {json.dumps(values)}}}
info = client.publish("{sensor.topic}", json.dumps(reading), qos=1)
info.wait_for_publish(timeout=30)  # PUBACK: the platform has stored the reading, or its rejection

client.disconnect()
client.loop_stop()"""
    return (
        f"From a shell, with `mosquitto_pub` (Debian/Ubuntu package `mosquitto-clients`) and the CA file "
        f"`{CA_FILE_NAME}` the operator gave you (a local test stack's is `.smartcity/tls/ca.crt`):\n\n"
        f"```sh connect-example\n{shell}\n```\n\n"
        f"From Python, with paho-mqtt 2 (MQTT 5, persistent session, QoS 1):\n\n"
        f"```python connect-example\n{python}\n```"
    )


def _section_timestamps(registry: Registry) -> str:
    return "\n\n".join(f"{e.title}:\n\n" + example_block(e) for e in timestamp_examples(registry))


def _section_rejects(registry: Registry) -> str:
    rows = [[f"`{code.value}`", *REJECT_HELP[code]] for code in RejectCode]
    parts = [_table(["Code", "Meaning", "How to fix it"], rows)]
    shown = reject_examples(registry)
    for example in shown:
        message = _reject_message(registry, example)
        parts.append(f"#### `{example.expect}`: {example.title}\n\n" + example_block(example))
        if message is not None:
            parts.append(f"The platform answers on `{reject_topic(example.topic)}`:\n\n"
                         f"```json reject-message\n{json.dumps(message, indent=2)}\n```")  # fmt: skip
    missing = [f"`{code.value}`" for code in RejectCode if code not in {e.expect for e in shown}]
    if missing:
        parts.append(f"No example is shown for {', '.join(missing)}: see the table above.")
    return "\n\n".join(parts)


def _section_schema_limits(registry: Registry) -> str:
    return "\n".join(f"- **{what}**: {text}" for what, text in SCHEMA_LIMITS)


DOC_SECTIONS: dict[str, Callable[[Registry], str]] = {
    "connect": _section_connect,
    "limits": _section_limits,
    "kinds": _section_kinds,
    "timestamps": _section_timestamps,
    "rejects": _section_rejects,
    "schema-limits": _section_schema_limits,
}
_SECTION = re.compile(r"(<!-- BEGIN GENERATED (?P<name>[\w-]+)[^>]*-->\n).*?(<!-- END GENERATED (?P=name) -->)", re.S)


def render_doc(text: str, registry: Registry, where: str = "docs/vendors.md") -> str:
    """`text` with every generated section (between BEGIN/END GENERATED markers) rendered anew."""
    found: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in DOC_SECTIONS:
            raise ContractSpecError(f"{where}: unknown generated section {name!r} (known: {', '.join(DOC_SECTIONS)})")
        found.append(name)
        return match.group(1) + DOC_SECTIONS[name](registry) + "\n" + match.group(3)

    rendered = _SECTION.sub(fill, text)
    missing = [name for name in DOC_SECTIONS if name not in found]
    if missing:
        raise ContractSpecError(f"{where}: no generated section {', '.join(missing)} (<!-- BEGIN GENERATED name -->)")
    return rendered


@dataclass(frozen=True)
class GuideExample:
    """An example as the guide shows it: its markers, its payload, and the reject message shown after it."""

    markers: dict[str, str]
    payload: str
    reject_message: dict[str, Any] | None


def connect_examples(text: str) -> dict[str, str]:
    """The guide's `connect-example` blocks by language (`sh`, `python`)."""
    return {m[1]: m[2] for m in re.finditer(r"^```(\w+) connect-example\n(.*?)\n```$", text, re.S | re.M)}


def guide_examples(text: str) -> list[GuideExample]:
    """Every `example` fenced block of a guide, in order, with the `reject-message` block that follows it."""
    found: list[GuideExample] = []
    for block in re.finditer(r"^```json (example|reject-message)(?: ([^\n]*))?\n(.*?)\n```$", text, re.S | re.M):
        if block[1] == "example":
            found.append(GuideExample(dict(item.split("=", 1) for item in block[2].split()), block[3], None))
        elif found:
            last = found[-1]
            found[-1] = GuideExample(last.markers, last.payload, json.loads(block[3]))
    return found
