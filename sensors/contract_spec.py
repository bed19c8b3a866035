"""The vendor contract as machine-readable documents: AsyncAPI 3.0 and JSON Schemas.

Vendors never see our code, only the broker, the contract and the reject topic.
Everything they are given is generated from the registry and from the
constants of `sensors.contract`, so it cannot drift from what ingest enforces:

    asyncapi_document(registry)   AsyncAPI 3.0: a channel per sensor kind, the reject
                                  channels, send/receive operations, MQTT bindings
    object_schema(kind)           JSON Schema (2020-12) of `{"ts", "values", "seq"}`
    senml_schema(kind)            JSON Schema (2020-12) of a SenML pack (RFC 8428)
    reject_schema()               JSON Schema of the message on the reject topic
    spec_files(registry)          every file `smartcity contract build` writes

The example messages these documents carry come from `sensors.contract_examples`;
the vendor guide, docs/vendors.md, is rendered by `sensors.contract_guide`.

The schemas use only keywords that mean the same in JSON Schema draft-07 and
2020-12, so the AsyncAPI document embeds them unchanged under AsyncAPI's
mandatory draft-07 schema format and every AsyncAPI tool reads them right.
Some rules of the decoder are out of reach of any JSON Schema (the clock, the
topic, the bytes, SenML records that inherit base fields); `SCHEMA_LIMITS`
lists them, the guide prints them and the tests exclude exactly those.

This module only describes; `Contract.decode` stays the one implementation of
the rules, and every example outcome shown to vendors is computed by it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from sensors.contract import (
    DEFAULT_MAX_AGE_MS,
    MALFORMED_REJECT_TOPIC,
    MAX_FUTURE_MS,
    MAX_PAYLOAD_BYTES,
    REJECT_PAYLOAD_BYTES,
    REJECT_PREFIX,
    SENML_RELATIVE_LIMIT_S,
    SEQ_MAX,
    TOPIC_PREFIX,
    Accepted,
    Contract,
    RejectCode,
    Rejected,
    format_window,
    reject_notice,
)
from sensors.contract_examples import (
    EXAMPLE_RECEIVED_MS,
    EXAMPLE_TS,
    EXAMPLE_TS_MS,
    Example,
    json_number,
    kind_examples,
    reject_examples,
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


def _metric_schema(metric: Metric) -> dict[str, Any]:
    required = "; required in every reading" if metric.required else ""
    low, high = json_number(metric.min), json_number(metric.max)
    return {
        "title": metric.name,
        "description": f"{metric.description}, in {metric.unit} ({low}..{high}){required}.",
        "type": "number",
        "minimum": low,
        "maximum": high,
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
    samples = [m for m in (example_reject_message(registry, e) for e in reject_examples(registry)) if m is not None]
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


def example_reject_message(registry: Registry, example: Example) -> dict[str, Any] | None:
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
