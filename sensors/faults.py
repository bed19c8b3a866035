"""Faults the simulator injects, the reject code ingest must answer each with, and `--faults` parsing.

A fault is chosen per reading slot (sensor, ts) by hashing, so it is part of
the deterministic output like the values. Per-message rates are probabilities
per reading; `silent` is the share of sensors that publish nothing at all. `drop`
is not in the default mix: `smartcity audit --production` finds such losses only
through `seq`, and the demo asks for it to show that.

| fault            | what is sent                                            | ingest answers   |
|------------------|---------------------------------------------------------|------------------|
| `malformed_json` | the reading's payload cut short (a torn buffer)         | `invalid_json`   |
| `out_of_range`   | one metric replaced by a firmware error value (-9999..) | `out_of_range`   |
| `unit_mismatch`  | SenML with a plausible wrong unit (mg/m3 for ug/m3, ...)| `unit_mismatch`  |
| `ts_in_future`   | local time sent as UTC: ts 7 h ahead                    | `ts_in_future`   |
| `ts_too_old`     | epoch seconds sent as milliseconds (object) / clock reset to 2000 (SenML) | `ts_too_old` |
| `unknown_sensor` | an extra reading for an unregistered sensor, by the `_gateway` (admin) | `unknown_sensor` |
| `duplicate`      | the same message again (a gateway retry): stored once   | accepted         |
| `conflict`       | a stored reading sent again later with one value changed | `conflict` (the first value is kept) |
| `late`           | the reading held back 10-60 reporting periods           | accepted         |
| `out_of_order`   | the reading sent just after the sensor's next one       | accepted         |
| `silent`         | the sensor publishes nothing during the run             | (missing data)   |
| `drop`           | lost before the broker (a gateway's full buffer): not sent | (a `seq` gap)    |

A vendor's broker account may publish only to its own sensors' topics, so an
unknown sensor's reading is published by the admin account acting as a
misconfigured gateway and recorded under the vendor `_gateway`.
"""

from __future__ import annotations

from enum import StrEnum

from sensors.contract import RejectCode
from sensors.errors import SmartcityError


class Fault(StrEnum):
    MALFORMED_JSON = "malformed_json"
    OUT_OF_RANGE = "out_of_range"
    UNIT_MISMATCH = "unit_mismatch"
    TS_IN_FUTURE = "ts_in_future"
    TS_TOO_OLD = "ts_too_old"
    LATE = "late"
    OUT_OF_ORDER = "out_of_order"
    UNKNOWN_SENSOR = "unknown_sensor"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    SILENT = "silent"
    DROP = "drop"


EXPECTED_CODE: dict[Fault, RejectCode] = {
    Fault.MALFORMED_JSON: RejectCode.INVALID_JSON,
    Fault.OUT_OF_RANGE: RejectCode.OUT_OF_RANGE,
    Fault.UNIT_MISMATCH: RejectCode.UNIT_MISMATCH,
    Fault.TS_IN_FUTURE: RejectCode.TS_IN_FUTURE,
    Fault.TS_TOO_OLD: RejectCode.TS_TOO_OLD,
    Fault.UNKNOWN_SENSOR: RejectCode.UNKNOWN_SENSOR,
    Fault.CONFLICT: RejectCode.CONFLICT,
}

# At most one of these per reading slot: they change or delay the reading itself.
SLOT_FAULTS = (
    Fault.MALFORMED_JSON,
    Fault.OUT_OF_RANGE,
    Fault.UNIT_MISMATCH,
    Fault.TS_IN_FUTURE,
    Fault.TS_TOO_OLD,
    Fault.LATE,
    Fault.OUT_OF_ORDER,
)

# `--faults default`: a fleet with everyday problems, about 1 % of messages rejected.
DEFAULT_FAULTS: dict[Fault, float] = {
    Fault.MALFORMED_JSON: 0.002,
    Fault.OUT_OF_RANGE: 0.003,
    Fault.UNIT_MISMATCH: 0.001,
    Fault.TS_IN_FUTURE: 0.001,
    Fault.TS_TOO_OLD: 0.001,
    Fault.UNKNOWN_SENSOR: 0.002,
    Fault.DUPLICATE: 0.01,
    Fault.CONFLICT: 0.001,
    Fault.LATE: 0.005,
    Fault.OUT_OF_ORDER: 0.005,
    Fault.SILENT: 0.01,
}


class FaultSpecError(SmartcityError):
    """A `--faults` value that cannot be used."""


def parse_faults(spec: str) -> dict[Fault, float]:
    """`none`, `default`, or `name=rate,...` (after `default,` the listed rates override the mix)."""
    rates: dict[Fault, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if item in {"", "none"}:
            continue
        if item == "default":
            rates.update(DEFAULT_FAULTS)
            continue
        name, sep, value = item.partition("=")
        try:
            fault = Fault(name.strip())
        except ValueError:
            known = ", ".join(f.value for f in Fault)
            raise FaultSpecError(f"--faults: unknown fault {name.strip()!r} (known: {known}, or 'default')") from None
        try:
            rate = float(value) if sep else float("nan")
        except ValueError:
            rate = float("nan")
        if not 0.0 <= rate <= 1.0:
            raise FaultSpecError(f"--faults: {item!r}: the rate must be a number from 0 to 1 (e.g. {fault.value}=0.01)")
        rates[fault] = rate
    slot_total = sum(rates.get(f, 0.0) for f in SLOT_FAULTS)
    if slot_total > 1.0:
        names = "+".join(f.value for f in SLOT_FAULTS if rates.get(f))
        raise FaultSpecError(f"--faults: {names} add up to {slot_total:g}; a reading can have only one of them")
    return {fault: rate for fault, rate in rates.items() if rate > 0}


def format_faults(rates: dict[Fault, float]) -> str:
    return ",".join(f"{fault.value}={rate:g}" for fault, rate in rates.items()) or "none"
