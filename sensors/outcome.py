"""What decoding one message gives: `Accepted` readings, or `Rejected` with exactly one `RejectCode`.

`sensors.contract` decides it; these names live apart, without the registry and pydantic, so
that a process that only counts outcomes (ingest's metrics, loaded by the raw writer child)
stays small.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from sensors.reading import Reading
    from sensors.registry import Sensor


class RejectCode(StrEnum):
    BAD_TOPIC = "bad_topic"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_SENSOR = "unknown_sensor"
    SENSOR_TOPIC_MISMATCH = "sensor_topic_mismatch"
    MISSING_TS = "missing_ts"
    INVALID_TS = "invalid_ts"
    TS_IN_FUTURE = "ts_in_future"
    TS_TOO_OLD = "ts_too_old"
    MISSING_VALUES = "missing_values"
    UNKNOWN_METRIC = "unknown_metric"
    INVALID_VALUE = "invalid_value"
    OUT_OF_RANGE = "out_of_range"
    UNIT_MISMATCH = "unit_mismatch"
    # Decided by ingest after the contract, against what it stored (ingest/history.py).
    CONFLICT = "conflict"


# Structs, not frozen dataclasses: one of them is made per message, and a Struct costs a fifth as much.
class Accepted(msgspec.Struct, frozen=True):
    readings: list[Reading]
    sensor: Sensor


class Rejected(msgspec.Struct, frozen=True):
    code: RejectCode
    detail: str
    sensor: Sensor | None = None
    # ts_in_future, ts_too_old: the reading's ts minus the time it was received (ingest's clock check).
    offset_ms: int | None = None


Decoded = Accepted | Rejected
