"""The payload contract: MQTT topic + payload bytes -> readings, or exactly one reject code.

This is the single implementation of the vendor contract of DESIGN.md. Ingest
calls it for every message and `smartcity contract check` calls it offline, so
a vendor gets the same answer from both.

Topic: `smartcity/v1/{city}/{kind}/{sensor_id}`. Payload: UTF-8 JSON of at most
16 KiB, either an object `{"ts": ..., "values": {...}, "seq": n}` or a SenML
pack (RFC 8428). Checks run in a fixed order and the first failure decides the
code, so every message gets exactly one reason:

    bad_topic, unknown_sensor, sensor_topic_mismatch (topic), payload_too_large,
    invalid_json, not_an_object, sensor_topic_mismatch (payload),
    missing_ts, invalid_ts, ts_in_future, ts_too_old,
    missing_values, unknown_metric, unit_mismatch, invalid_value, out_of_range

Timestamps: `ts` is epoch milliseconds (a number) or an RFC 3339 string with
an offset; SenML times are absolute epoch seconds (`bt` + `t`). Relative SenML
times (below 2**28, "seconds from now") are refused: a reading's identity is
(sensor_id, ts), and a time set by the receiver would turn every QoS 1
redelivery into a new reading. All times are kept in UTC at millisecond
precision (finer digits are dropped).

Why one file of about 600 lines: `Contract.decode` has a fast path that may only accept and a
general path that decides every rejection. They must give the same answer for every payload
(tests/sensors checks it), and that is only reviewable with both, and the helpers they share,
side by side. The pieces with their own reasons to change already live elsewhere: the outcome
types (`sensors.outcome`), topic names (`sensors.topics`), the spec and vendor guide
(`contract_spec`, `contract_guide`, `contract_examples`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from sensors.outcome import Accepted as Accepted
from sensors.outcome import Decoded as Decoded
from sensors.outcome import RejectCode as RejectCode
from sensors.outcome import Rejected as Rejected
from sensors.reading import Reading, Rejection
from sensors.registry import Registry, Sensor
from sensors.registry.model import SENSOR_ID_PATTERN
from sensors.topics import MALFORMED_REJECT_TOPIC, REJECT_PREFIX, TOPIC_PREFIX
from sensors.topics import SUBSCRIPTION as SUBSCRIPTION

MAX_PAYLOAD_BYTES = 16 * 1024
# The broker refuses a larger MQTT packet (topic + payload + properties) outright: it closes the
# connection without a PUBACK, so the publish is neither stored nor rejected. The 4 KiB above the
# payload limit are for the topic and properties, and so that ingest still sees, and rejects with
# `payload_too_large`, payloads a little over the limit.
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 4 * 1024
REJECT_PAYLOAD_BYTES = 4 * 1024  # of the payload, in the notice published on the reject topic
# Of the payload, in the record kept on disk (with its length and SHA-256): a flood of 16 KiB bad
# messages then costs about 1 KiB of spool each instead of 5.6 KiB (docs/reliability.md).
STORED_PAYLOAD_BYTES = 512
MAX_FUTURE_MS = 5 * 60 * 1000
# How old a reading may be when it arrives: a gateway's buffer through a long outage (a weekend
# without backhaul), not the raw retention; a longer window lets a vendor rewrite older history and
# makes ingest's conflict index larger (docs/reliability.md, "... history is not rewritten").
DEFAULT_MAX_AGE_MS = 72 * 3600 * 1000
SENML_RELATIVE_LIMIT_S = 2**28
# A sensor's optional message counter: a signed 64-bit integer that is never negative, so every
# language's int64 holds it; a larger one could not be written to the spool or compared.
SEQ_MAX = 2**63 - 1
# Epoch milliseconds before 2001-09-09 look like a vendor sending seconds by mistake.
EPOCH_SECONDS_HINT_BELOW = 10**12
# An object payload's `ts` beyond this many epoch milliseconds (year 33658) is `invalid_ts`.
MAX_EPOCH_MS = 10**15

_SENSOR_ID = re.compile(SENSOR_ID_PATTERN)
_FRACTION = re.compile(r"\.\d+")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)$")


class _Reject(Exception):
    def __init__(self, code: RejectCode, detail: str, offset_ms: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.offset_ms = offset_ms


@dataclass(frozen=True)
class TopicParts:
    city: str
    kind: str
    sensor_id: str


def parse_topic(topic: str) -> TopicParts | None:
    """The parts of a reading topic, or None if it does not follow the contract."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    parts = topic[len(TOPIC_PREFIX) :].split("/")
    if len(parts) != 3 or not all(parts) or not _SENSOR_ID.match(parts[2]):
        return None
    return TopicParts(*parts)


def reading_topic(city: str, kind: str, sensor_id: str) -> str:
    """The topic a sensor publishes on (the one place that spells it)."""
    return f"{TOPIC_PREFIX}{city}/{kind}/{sensor_id}"


def reject_topic(topic: str) -> str:
    """Where a rejection of a message on `topic` is published."""
    parts = parse_topic(topic)
    if parts is None:
        return MALFORMED_REJECT_TOPIC
    return f"{REJECT_PREFIX}{parts.city}/{parts.kind}/{parts.sensor_id}"


# The fast path's payload shapes. Unknown fields are refused, not skipped: msgspec skips a field without
# checking its UTF-8 or number range, where the general path refuses such a payload as `invalid_json`.
class _ObjectPayload(msgspec.Struct, forbid_unknown_fields=True):
    """An object payload as the fast path takes it (`Contract._fast`): any other shape, `null` included, fails
    to decode and goes the general way."""

    ts: int | float | str
    values: dict[str, float]
    seq: int | UnsetType = UNSET
    sensor_id: str | UnsetType = UNSET


class _SenmlRecord(msgspec.Struct, forbid_unknown_fields=True):
    """A SenML record as the fast path takes it (a `null` fails to decode: it is not the same as absent)."""

    bn: str | UnsetType = UNSET
    bt: float | UnsetType = UNSET
    bu: str | UnsetType = UNSET
    bv: float | UnsetType = UNSET
    n: str | UnsetType = UNSET
    u: str | UnsetType = UNSET
    t: float | UnsetType = UNSET
    v: float | UnsetType = UNSET


_decode_object = msgspec.json.Decoder(_ObjectPayload).decode
_decode_senml = msgspec.json.Decoder(list[_SenmlRecord]).decode
# What a typed decode raises on a payload of another shape (it then goes the general way).
_NOT_FAST = (msgspec.DecodeError, UnicodeDecodeError, RecursionError, _Reject)


class _Fallback(Exception):
    """The fast path cannot decide this message: the general path does, and names the reason."""


class Contract:
    """Decodes messages against a registry. Readings older than `max_age_ms` when received are refused
    (`ts_too_old`): the acceptance window, at most the raw retention.

    Each message first goes a fast path (`_fast`) that only accepts: a typed decode of the usual payload
    shapes and the checks in a few lines. Anything it does not accept, it hands to the general path,
    which decides the reject code and its detail; the fast path never decides a rejection, so a
    rejection's reason is the general path's alone (tests/sensors checks both agree on accepted ones).
    """

    def __init__(self, registry: Registry, max_age_ms: int = DEFAULT_MAX_AGE_MS) -> None:
        self.registry = registry
        self.max_age_ms = max_age_ms
        self._metrics = {kind.id: {metric.name: metric for metric in kind.metrics} for kind in registry.kinds.values()}
        self._required = {
            kind.id: [metric.name for metric in kind.metrics if metric.required] for kind in registry.kinds.values()
        }
        # For the fast path: each kind's metric -> (min, max, unit), and the sensor of each topic that passes
        # the topic checks (a sensor has one topic, so this is as large as the fleet).
        self._bounds = {
            kind.id: {metric.name: (metric.min, metric.max, metric.unit) for metric in kind.metrics}
            for kind in registry.kinds.values()
        }
        self._topics = {
            sensor.topic: sensor
            for sensor in registry.sensors.values()
            if parse_topic(sensor.topic) == TopicParts(sensor.city, sensor.kind, sensor.id)
        }

    def decode(self, topic: str, payload: bytes, received_ms: int) -> Decoded:
        """Never raises on any input: returns the readings or one reject code with a human detail."""
        sensor = self._topics.get(topic)
        if sensor is not None and len(payload) <= MAX_PAYLOAD_BYTES:
            try:
                return Accepted(self._fast(payload, sensor, received_ms), sensor)
            except _Fallback:
                pass
        return self._decode(topic, payload, received_ms)

    def _decode(self, topic: str, payload: bytes, received_ms: int) -> Decoded:
        """The general path: every check in the contract's order, the first failure decides the code."""
        sensor: Sensor | None = None
        try:
            parts = self._topic_parts(topic)
            sensor = self.registry.sensors.get(parts.sensor_id)
            if sensor is None:
                raise _Reject(RejectCode.UNKNOWN_SENSOR, f"sensor {parts.sensor_id!r} is not in the registry")
            if (parts.city, parts.kind) != (sensor.city, sensor.kind):
                raise _Reject(
                    RejectCode.SENSOR_TOPIC_MISMATCH,
                    f"sensor {sensor.id!r} is registered as kind {sensor.kind!r} in city {sensor.city!r}; "
                    f"publish to {sensor.topic}",
                )
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise _Reject(
                    RejectCode.PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}"
                )
            document = _parse_json(payload)
            if isinstance(document, dict):
                samples = self._object_samples(document, sensor, received_ms)
            elif isinstance(document, list):
                samples = self._senml_samples(document, sensor, received_ms)
            else:
                raise _Reject(
                    RejectCode.NOT_AN_OBJECT,
                    f"payload is a JSON {_json_type(document)}; expected an object or a SenML array",
                )
            readings = [sensor.reading(ts, values, seq, received_ms) for ts, values, seq in samples]
        except _Reject as reject:
            return Rejected(reject.code, reject.detail, sensor, reject.offset_ms)
        return Accepted(readings, sensor)

    # -- fast path --------------------------------------------------------------------

    def _fast(self, payload: bytes, sensor: Sensor, received_ms: int) -> list[Reading]:
        """The readings of a payload the general path accepts, with the same values; raises `_Fallback` for any
        other (a rejection, or a shape it does not take). Its topic names `sensor` and it is not too large."""
        start = payload[:1]
        try:
            if start == b"{":
                return self._fast_object(_decode_object(payload), sensor, received_ms)
            if start == b"[":
                return self._fast_senml(_decode_senml(payload), sensor, received_ms)
        except _NOT_FAST:
            pass
        raise _Fallback

    def _fast_object(self, document: _ObjectPayload, sensor: Sensor, received_ms: int) -> list[Reading]:
        if document.sensor_id is not UNSET and document.sensor_id != sensor.id:
            raise _Fallback
        raw_ts = document.ts
        # An int up to 1e15 is used as it is (exact as a float too); anything else as the general path reads it.
        ts = raw_ts if type(raw_ts) is int and -MAX_EPOCH_MS <= raw_ts <= MAX_EPOCH_MS else _object_ts(raw_ts)
        if not received_ms - self.max_age_ms <= ts <= received_ms + MAX_FUTURE_MS:
            raise _Fallback
        values = document.values
        seq = document.seq
        if not values or (seq is not UNSET and not 0 <= seq <= SEQ_MAX):
            raise _Fallback
        # Known metrics, each within its range (decoded as floats, so finite), and the required ones.
        bounds = self._bounds[sensor.kind]
        for name, value in values.items():
            limits = bounds.get(name)
            if limits is None or not limits[0] <= value <= limits[1]:
                raise _Fallback
        for name in self._required[sensor.kind]:
            if name not in values:
                raise _Fallback
        return [sensor.reading(ts, values, None if seq is UNSET else seq, received_ms)]

    def _fast_senml(self, pack: list[_SenmlRecord], sensor: Sensor, received_ms: int) -> list[Reading]:
        if not pack:
            raise _Fallback
        unset = UNSET
        own = sensor.id + ":"
        bounds = self._bounds[sensor.kind]
        window = (received_ms - self.max_age_ms, received_ms + MAX_FUTURE_MS)
        base_name, base_time, base_ts, base_unit = "", 0.0, None, None
        plain = True  # the base name is `{sensor_id}:` or empty: a metric's own name is the metric
        by_time: dict[int, dict[str, float]] = {}
        for record in pack:
            if record.bn is not unset:
                base_name = record.bn
                plain = base_name == own or not base_name
            if record.bt is not unset:
                base_time = record.bt
                base_ts = _fast_senml_ts(base_time, window)
            if record.bu is not unset:
                base_unit = record.bu
            value = record.v
            # A base value is added to `v` (rare: the general path does the sum as the vendor wrote it).
            if value is unset or record.bv:
                raise _Fallback
            n = record.n
            if plain and n in bounds:  # metric names have no ':' or '/' (registry identifiers)
                metric = n
            else:
                metric = self._senml_metric(base_name + ("" if n is unset else n), sensor, 0)
            if record.t is not unset:
                ts = _fast_senml_ts(base_time + record.t, window)
            elif base_ts is None:
                raise _Fallback
            else:
                ts = base_ts
            unit = base_unit if record.u is unset else record.u
            limits = bounds.get(metric)
            if limits is None or (unit is not None and unit != limits[2]) or not limits[0] <= value <= limits[1]:
                raise _Fallback
            sample = by_time.get(ts)
            if sample is None:
                by_time[ts] = {metric: value}
            elif metric in sample:
                raise _Fallback
            else:
                sample[metric] = value
        required = self._required[sensor.kind]
        for values in by_time.values():
            for name in required:
                if name not in values:
                    raise _Fallback
        if len(by_time) == 1:
            [(ts, values)] = by_time.items()
            return [sensor.reading(ts, values, None, received_ms)]
        return [sensor.reading(ts, values, None, received_ms) for ts, values in sorted(by_time.items())]

    # -- topic ------------------------------------------------------------------------

    @staticmethod
    def _topic_parts(topic: str) -> TopicParts:
        parts = parse_topic(topic)
        if parts is None:
            raise _Reject(
                RejectCode.BAD_TOPIC,
                f"topic {topic[:200]!r} does not match smartcity/v1/{{city}}/{{kind}}/{{sensor_id}} "
                "(sensor_id: lowercase letters, digits and '-', 2-63 characters)",
            )
        return parts

    # -- object payload -----------------------------------------------------------------

    def _object_samples(
        self, document: dict[str, Any], sensor: Sensor, received_ms: int
    ) -> list[tuple[int, dict[str, float], int | None]]:
        claimed = document.get("sensor_id")
        if claimed is not None and claimed != sensor.id:
            raise _Reject(
                RejectCode.SENSOR_TOPIC_MISMATCH,
                f"payload names sensor {str(claimed)[:80]!r} but was published on {sensor.id!r}'s topic",
            )
        if "ts" not in document:
            raise _Reject(RejectCode.MISSING_TS, "the object has no 'ts' (epoch milliseconds or RFC 3339 with offset)")
        ts = self._check_time(_object_ts(document["ts"]), received_ms)
        values = document.get("values")
        if not isinstance(values, dict) or not values:
            found = ", ".join(sorted(map(str, document))[:10])
            raise _Reject(RejectCode.MISSING_VALUES, f"'values' must be a non-empty object of metrics (keys: {found})")
        seq = document.get("seq")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= SEQ_MAX):
            raise _Reject(RejectCode.INVALID_VALUE, f"seq: {_show(seq)} is not an integer from 0 to 2^63-1")
        checked = {name: self._check_value(sensor, name, value, None) for name, value in values.items()}
        self._check_required(sensor, checked)
        return [(ts, checked, seq)]

    # -- SenML payload ------------------------------------------------------------------

    def _senml_samples(
        self, pack: list[Any], sensor: Sensor, received_ms: int
    ) -> list[tuple[int, dict[str, float], int | None]]:
        if not pack:
            raise _Reject(RejectCode.MISSING_VALUES, "the SenML pack is empty")
        base_name, base_time, base_unit, base_value = "", None, None, 0.0
        by_time: dict[int, dict[str, float]] = {}
        for index, record in enumerate(pack):
            if not isinstance(record, dict):
                raise _Reject(
                    RejectCode.NOT_AN_OBJECT, f"SenML record {index} is a JSON {_json_type(record)}; expected an object"
                )
            if "bn" in record:
                base_name = record["bn"] if isinstance(record["bn"], str) else ""
            if "bt" in record:
                base_time = record["bt"]
            if "bu" in record:
                base_unit = record["bu"]
            if "bv" in record:
                base_value = record["bv"]
            name = base_name + (record["n"] if isinstance(record.get("n"), str) else "")
            metric = self._senml_metric(name, sensor, index)
            if base_time is None and "t" not in record:
                raise _Reject(RejectCode.MISSING_TS, f"SenML record {index} ({metric}) has no time ('bt' or 't')")
            ts = self._check_time(_senml_ts(base_time, record.get("t", 0), index), received_ms)
            unit = record.get("u", base_unit)
            if "v" not in record:
                others = [k for k in ("vs", "vb", "vd", "s") if k in record]
                what = f"has {others[0]!r} instead" if others else "has no 'v'"
                raise _Reject(RejectCode.INVALID_VALUE, f"SenML record {index} ({metric}) {what}; metrics are numbers")
            sample = by_time.setdefault(ts, {})
            if metric in sample:
                raise _Reject(
                    RejectCode.INVALID_VALUE, f"SenML record {index}: {metric} appears twice for the same time"
                )
            value = record["v"]
            if base_value and _is_number(value) and _is_number(base_value):
                value = base_value + value
            sample[metric] = self._check_value(sensor, metric, value, unit)
        for values in by_time.values():
            self._check_required(sensor, values)
        return [(ts, values, None) for ts, values in sorted(by_time.items())]

    def _senml_metric(self, name: str, sensor: Sensor, index: int) -> str:
        """Resolve a SenML name: the metric itself, or `{sensor_id}:{metric}` / `.../{sensor_id}/{metric}`."""
        prefix, sep, metric = name.rpartition(":") if ":" in name else name.rpartition("/")
        if sep:
            owner = prefix.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
            if owner and owner != sensor.id:
                raise _Reject(
                    RejectCode.SENSOR_TOPIC_MISMATCH,
                    f"SenML record {index} names sensor {owner[:80]!r} but was published on {sensor.id!r}'s topic",
                )
        if not metric:
            raise _Reject(RejectCode.MISSING_VALUES, f"SenML record {index} has no name ('bn' + 'n')")
        return metric

    # -- shared checks ------------------------------------------------------------------

    def _check_time(self, ts: int, received_ms: int) -> int:
        if ts > received_ms + MAX_FUTURE_MS:
            raise _Reject(
                RejectCode.TS_IN_FUTURE,
                f"ts {_iso(ts)} is more than {MAX_FUTURE_MS // 60000} min after it was received "
                f"({_iso(received_ms)}); check the sensor's clock",
                ts - received_ms,
            )
        if ts < received_ms - self.max_age_ms:
            hint = "; it looks like epoch seconds: send milliseconds" if 0 <= ts < EPOCH_SECONDS_HINT_BELOW else ""
            raise _Reject(
                RejectCode.TS_TOO_OLD,
                f"ts {_iso(ts)} is older than the {format_window(self.max_age_ms)} acceptance window{hint}",
                ts - received_ms,
            )
        return ts

    def _check_value(self, sensor: Sensor, name: Any, value: Any, unit: Any) -> float:
        metric = self._metrics[sensor.kind].get(name)
        if metric is None:
            known = ", ".join(self._metrics[sensor.kind])
            raise _Reject(
                RejectCode.UNKNOWN_METRIC, f"{str(name)[:80]!r} is not a metric of {sensor.kind} (known: {known})"
            )
        if unit is not None and unit != metric.unit:
            raise _Reject(
                RejectCode.UNIT_MISMATCH, f"{metric.name}: unit {str(unit)[:40]!r} given, {metric.unit!r} expected"
            )
        if not _is_number(value):
            raise _Reject(RejectCode.INVALID_VALUE, f"{metric.name}: {_show(value)} is not a number")
        number = _finite(value)
        if number is None:
            raise _Reject(RejectCode.INVALID_VALUE, f"{metric.name}: {_show(value)} is not a finite number")
        if not metric.min <= number <= metric.max:
            raise _Reject(
                RejectCode.OUT_OF_RANGE,
                f"{metric.name}: {number:g} {metric.unit} is outside {metric.min:g}..{metric.max:g}",
            )
        return number

    def _check_required(self, sensor: Sensor, values: Mapping[str, float]) -> None:
        missing = [name for name in self._required[sensor.kind] if name not in values]
        if missing:
            raise _Reject(RejectCode.MISSING_VALUES, f"required metric {', '.join(missing)} missing")


def format_window(ms: int) -> str:
    """`72 h`, `30 day`: an acceptance window as vendors read it."""
    hours = ms / 3_600_000
    if hours >= 24 * 7 and hours % 24 == 0:
        return f"{hours / 24:g} day"
    return f"{hours:g} h"


def rejection_record(topic: str, payload: bytes, rejected: Rejected, received_ms: int) -> Rejection:
    """The record kept in the reject store: the first `STORED_PAYLOAD_BYTES` of the payload, its length
    and SHA-256."""
    return Rejection(
        code=rejected.code.value,
        detail=rejected.detail,
        topic=topic,
        received_at=_iso(received_ms),
        payload_b64=base64.b64encode(payload[:STORED_PAYLOAD_BYTES]).decode(),
        sensor_id=rejected.sensor.id if rejected.sensor else None,
        vendor=rejected.sensor.vendor if rejected.sensor else None,
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    )


def reject_notice(topic: str, payload: bytes, rejected: Rejected, received_ms: int) -> dict[str, str]:
    """The message published on the reject topic (DESIGN.md's fields; the payload cut at 4 KiB)."""
    return {
        "code": rejected.code.value,
        "detail": rejected.detail,
        "topic": topic,
        "received_at": _iso(received_ms),
        "payload_b64": base64.b64encode(payload[:REJECT_PAYLOAD_BYTES]).decode(),
    }


# -- helpers ----------------------------------------------------------------------------

_json_decoder = msgspec.json.Decoder()


def _parse_json(payload: bytes) -> Any:
    try:
        return _json_decoder.decode(payload)
    except RecursionError:
        raise _Reject(RejectCode.INVALID_JSON, "payload JSON is nested too deeply") from None
    except UnicodeDecodeError as err:  # msgspec raises it for invalid UTF-8 inside a JSON string
        raise _Reject(RejectCode.INVALID_JSON, f"payload is not valid UTF-8 (byte {err.start})") from None
    except msgspec.DecodeError as err:
        first_error = str(err)
    # msgspec refuses the non-standard NaN/Infinity tokens some firmware emits; parse them so
    # the vendor is told which value is wrong instead of only "invalid JSON".
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Reject(RejectCode.INVALID_JSON, f"payload is not valid UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text, parse_constant=float)
    except (ValueError, RecursionError):
        raise _Reject(RejectCode.INVALID_JSON, f"payload is not valid JSON: {first_error}") from None


def _object_ts(raw: Any) -> int:
    if isinstance(raw, bool) or raw is None:
        raise _Reject(RejectCode.INVALID_TS, f"ts {_show(raw)} is neither epoch milliseconds nor RFC 3339")
    if isinstance(raw, int | float):
        ms = _finite(raw)
        if ms is None or abs(ms) > MAX_EPOCH_MS:
            raise _Reject(RejectCode.INVALID_TS, f"ts {_show(raw)} is not a usable epoch milliseconds value")
        return int(ms)
    if isinstance(raw, str):
        if not _RFC3339.match(raw):
            raise _Reject(
                RejectCode.INVALID_TS,
                f"ts {raw[:60]!r} is not RFC 3339 with an offset (e.g. 2026-11-25T14:30:00+07:00)",
            )
        # Python parses at most microseconds and wants an upper-case T and Z.
        normalized = _FRACTION.sub(lambda m: m.group(0)[:7], raw[:10] + "T" + raw[11:]).replace("z", "Z")
        try:
            moment = datetime.fromisoformat(normalized)
        except ValueError:
            raise _Reject(RejectCode.INVALID_TS, f"ts {raw[:60]!r} is not a valid date and time") from None
        return _epoch_ms(moment)
    raise _Reject(RejectCode.INVALID_TS, f"ts is a JSON {_json_type(raw)}; expected a number or a string")


def _fast_senml_ts(seconds: float, window: tuple[int, int]) -> int:
    """`_senml_ts` and `_check_time` of the fast path: the time in ms, or `_Fallback`."""
    if not SENML_RELATIVE_LIMIT_S <= abs(seconds) <= 1e12:
        raise _Fallback
    ts = math.floor(seconds * 1000)
    if not window[0] <= ts <= window[1]:
        raise _Fallback
    return ts


def _senml_ts(base_time: Any, offset: Any, index: int) -> int:
    parts = []
    for field, value in (("bt", 0.0 if base_time is None else base_time), ("t", offset)):
        number = _finite(value)
        if number is None:
            raise _Reject(
                RejectCode.INVALID_TS, f"SenML record {index}: '{field}' {_show(value)} is not a finite number"
            )
        parts.append(number)
    seconds = parts[0] + parts[1]
    if abs(seconds) < SENML_RELATIVE_LIMIT_S:
        raise _Reject(
            RejectCode.INVALID_TS,
            f"SenML record {index}: time {seconds:g} is relative (below 2**28); send absolute epoch seconds",
        )
    if abs(seconds) > 1e12:
        raise _Reject(RejectCode.INVALID_TS, f"SenML record {index}: time {seconds:g} s is out of range")
    return math.floor(seconds * 1000)


def _finite(value: Any) -> float | None:
    """`value` as a finite float, or None (not a number, NaN, infinite, or too large for a float)."""
    if type(value) is float:  # the usual case, first (this runs for every value of every message)
        return value if math.isfinite(value) else None
    if not _is_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


_NUMBER_TYPES = (int, float)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER_TYPES) and type(value) is not bool


def _epoch_ms(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _show(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"a JSON {_json_type(value)}"
    try:
        text = str(value) if isinstance(value, float) and not math.isfinite(value) else json.dumps(value)
    except ValueError:  # an integer beyond Python's 4300-digit str() limit
        return "a number too large to show"
    return text if len(text) <= 60 else text[:57] + "..."
