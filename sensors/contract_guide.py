"""The vendor guide, docs/vendors.md: its generated sections, and its examples read back.

`render_doc` redoes every section between `<!-- BEGIN GENERATED name -->` and
`<!-- END GENERATED name -->` (`DOC_SECTIONS`) from the registry, the schemas'
`SCHEMA_LIMITS` and the examples of `sensors.contract_examples`; `REJECT_HELP`
says what each reject code means and how to fix it. `guide_examples` and
`connect_examples` read the guide's fenced blocks back, for the tests that run
them through `smartcity contract check` and a real broker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sensors.contract import (
    DEFAULT_MAX_AGE_MS,
    EPOCH_SECONDS_HINT_BELOW,
    MAX_FUTURE_MS,
    MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES,
    REJECT_PAYLOAD_BYTES,
    SENML_RELATIVE_LIMIT_S,
    TOPIC_PREFIX,
    RejectCode,
    format_window,
    reject_topic,
)
from sensors.contract_examples import (
    EXAMPLE_RECEIVED_MS,
    EXAMPLE_TS,
    Example,
    example_value,
    first_sensors,
    json_number,
    kind_examples,
    reject_examples,
    timestamp_examples,
)
from sensors.contract_spec import MAX_ABS_TS_MS, SCHEMA_LIMITS, ContractSpecError, example_reject_message
from sensors.registry import Registry
from sensors.registry.model import SENSOR_ID_PATTERN

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
            [f"`{m.name}`", f"`{m.unit}`", str(json_number(m.min)), str(json_number(m.max)),
             "yes" if m.required else "", m.description]
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
    sensor = next(iter(first_sensors(registry).values()), None)
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
        message = example_reject_message(registry, example)
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
