"""The payload contract: every reject code is reachable, valid payloads decode exactly, nothing raises."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensors.contract import (
    MALFORMED_REJECT_TOPIC,
    MAX_PAYLOAD_BYTES,
    Accepted,
    Contract,
    RejectCode,
    Rejected,
    reject_notice,
    reject_topic,
    rejection_record,
)
from sensors.faults import parse_faults
from sensors.reading import Reading, decode_reading, encode_reading
from sensors.registry import default_registry
from sensors.simulator import Plan, Simulation, select_sensors

NOW = 1_795_600_000_000  # 2026-11-25T09:46:40Z
NOW_S = NOW // 1000
AQ = "smartcity/v1/phuket/air_quality/pkt-aq-001"
WL = "smartcity/v1/phuket/water_level/pkt-wl-001"
contract = Contract(default_registry())


def obj(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def decode(topic: str, payload: bytes) -> Accepted | Rejected:
    return contract.decode(topic, payload, NOW)


# Every reject code of DESIGN.md, with a message that triggers it and a word the detail must contain.
REJECT_CASES = [
    ("bad_topic", "smartcity/v1/phuket/air_quality", obj(ts=NOW, values={"pm25": 1}), "does not match"),
    ("bad_topic", "smartcity/v1/phuket/air_quality/PKT_AQ_001", obj(ts=NOW, values={"pm25": 1}), "sensor_id"),
    ("bad_topic", "city/phuket/x", b"{}", "does not match"),
    ("payload_too_large", AQ, b" " * (MAX_PAYLOAD_BYTES + 1), "16384"),
    ("invalid_json", AQ, b'{"ts": 1, "values": {', "not valid JSON"),
    ("invalid_json", AQ, b"\xff\xfe\x00garbage", "UTF-8"),
    ("invalid_json", AQ, b'{"ts": 1, "values": {"pm25": 1}, "note": "\xc3\x28"}', "UTF-8"),
    ("invalid_json", AQ, b"[" * 5000 + b"]" * 5000, "JSON"),
    ("invalid_json", AQ, b'{"ts": 1%s, "values": {"pm25": 1}}' % (b"0" * 5000), "not valid JSON"),
    ("not_an_object", AQ, b"42", "number"),
    ("not_an_object", AQ, b'"pm25=12"', "string"),
    ("not_an_object", AQ, b"[1, 2]", "SenML record 0"),
    ("unknown_sensor", "smartcity/v1/phuket/air_quality/pkt-aq-999", obj(ts=NOW, values={"pm25": 1}), "pkt-aq-999"),
    ("sensor_topic_mismatch", "smartcity/v1/phuket/weather/pkt-aq-001", obj(ts=NOW, values={"pm25": 1}), "publish to"),
    (
        "sensor_topic_mismatch",
        "smartcity/v1/chiang-mai/air_quality/pkt-aq-001",
        obj(ts=NOW, values={"pm25": 1}),
        "city",
    ),
    ("sensor_topic_mismatch", AQ, obj(sensor_id="pkt-aq-002", ts=NOW, values={"pm25": 1}), "pkt-aq-002"),
    (
        "sensor_topic_mismatch",
        AQ,
        json.dumps([{"bn": "pkt-aq-002:", "bt": NOW_S, "n": "pm25", "v": 1}]).encode(),
        "names",
    ),
    ("missing_ts", AQ, obj(values={"pm25": 1}), "'ts'"),
    ("missing_ts", AQ, json.dumps([{"n": "pm25", "v": 1}]).encode(), "no time"),
    ("invalid_ts", AQ, obj(ts="yesterday", values={"pm25": 1}), "RFC 3339"),
    ("invalid_ts", AQ, obj(ts="2026-11-25T10:00:00", values={"pm25": 1}), "offset"),
    ("invalid_ts", AQ, obj(ts="2026-02-30T10:00:00Z", values={"pm25": 1}), "not a valid date"),
    ("invalid_ts", AQ, obj(ts=True, values={"pm25": 1}), "neither"),
    ("invalid_ts", AQ, obj(ts=[NOW], values={"pm25": 1}), "array"),
    ("invalid_ts", AQ, json.dumps([{"n": "pm25", "t": 10, "v": 1}]).encode(), "relative"),
    ("invalid_ts", AQ, b'{"ts": 1%s, "values": {"pm25": 1}}' % (b"0" * 400), "not a usable"),
    ("invalid_ts", AQ, b'[{"n": "pm25", "v": 1, "t": 1%s}]' % (b"0" * 400), "not a finite number"),
    ("invalid_ts", AQ, obj(ts="2026-11-25T10:00:00+00:99", values={"pm25": 1}), "RFC 3339"),
    ("ts_in_future", AQ, obj(ts=NOW + 5 * 60_000 + 1, values={"pm25": 1}), "clock"),
    ("ts_in_future", AQ, obj(ts="2100-01-01T00:00:00Z", values={"pm25": 1}), "2100"),
    ("ts_too_old", AQ, obj(ts=NOW - 73 * 3_600_000, values={"pm25": 1}), "72 h acceptance window"),
    ("ts_too_old", AQ, obj(ts=NOW - 28 * 86_400_000, values={"pm25": 1}), "72 h acceptance window"),
    ("ts_too_old", AQ, obj(ts=NOW_S, values={"pm25": 1}), "epoch seconds"),
    ("ts_too_old", AQ, obj(ts="1970-01-01T00:00:00Z", values={"pm25": 1}), "1970"),
    ("missing_values", AQ, obj(ts=NOW), "'values'"),
    ("missing_values", AQ, obj(ts=NOW, values={}), "non-empty"),
    ("missing_values", AQ, obj(ts=NOW, value={"pm25": 1}), "keys: ts, value"),
    ("missing_values", WL, obj(ts=NOW, values={}), "non-empty"),
    ("missing_values", AQ, b"[]", "empty"),
    ("unknown_metric", AQ, obj(ts=NOW, values={"pm2.5": 1}), "pm2.5"),
    ("unknown_metric", AQ, json.dumps([{"bt": NOW_S, "n": "temperature", "v": 30}]).encode(), "temperature"),
    ("unit_mismatch", AQ, json.dumps([{"bt": NOW_S, "n": "pm25", "u": "mg/m3", "v": 1}]).encode(), "ug/m3"),
    ("invalid_value", AQ, obj(ts=NOW, values={"pm25": "12"}), "not a number"),
    ("invalid_value", AQ, obj(ts=NOW, values={"pm25": None}), "not a number"),
    ("invalid_value", AQ, obj(ts=NOW, values={"pm25": True}), "not a number"),
    ("invalid_value", AQ, b'{"ts": %d, "values": {"pm25": NaN}}' % NOW, "finite"),
    ("invalid_value", AQ, b'{"ts": %d, "values": {"pm25": Infinity}}' % NOW, "finite"),
    ("invalid_value", AQ, b'{"ts": %d, "values": {"pm25": 1e999}}' % NOW, "finite"),
    ("invalid_value", AQ, obj(ts=NOW, values={"pm25": 1}, seq=-1), "seq: -1 is not an integer from 0 to 2^63-1"),
    ("invalid_value", AQ, obj(ts=NOW, values={"pm25": 1}, seq=2**63), "seq: 9223372036854775808 is not an integer"),
    ("invalid_value", AQ, obj(ts=NOW, values={"pm25": 1}, seq=1.5), "seq: 1.5 is not an integer"),
    ("invalid_value", AQ, obj(ts=NOW, values={"pm25": 1}, seq="7"), 'seq: "7" is not an integer'),
    ("invalid_value", AQ, obj(ts=NOW, values={"pm25": 1}, seq=True), "seq: true is not an integer"),
    ("invalid_value", AQ, json.dumps([{"bt": NOW_S, "n": "pm25", "vs": "12"}]).encode(), "'vs'"),
    ("out_of_range", AQ, obj(ts=NOW, values={"pm25": -0.1}), "outside 0..1000"),
    ("out_of_range", AQ, obj(ts=NOW, values={"pm25": 10**30}), "outside"),
    ("out_of_range", WL, obj(ts=NOW, values={"level": 99}), "m is outside"),
]


@pytest.mark.parametrize(("code", "topic", "payload", "hint"), REJECT_CASES, ids=[c[0] for c in REJECT_CASES])
def test_each_reject_code(code: str, topic: str, payload: bytes, hint: str) -> None:
    result = decode(topic, payload)
    assert isinstance(result, Rejected), result
    assert result.code == code, result.detail
    assert hint in result.detail


def test_every_reject_code_is_covered() -> None:
    # `conflict` is ingest's: it needs what was stored before (tests/ingest/test_history.py).
    assert {case[0] for case in REJECT_CASES} == {code.value for code in RejectCode} - {"conflict"}


def test_required_metric_missing() -> None:
    result = decode(WL, obj(ts=NOW, values={}))
    assert isinstance(result, Rejected) and result.code == RejectCode.MISSING_VALUES
    pk = "smartcity/v1/phuket/parking/pkt-pk-001"
    result = decode(pk, obj(ts=NOW, values={"capacity": 120}))
    assert isinstance(result, Rejected) and result.code == RejectCode.MISSING_VALUES
    assert "occupied" in result.detail


def test_object_payload_decodes_to_one_reading_with_registry_context() -> None:
    result = decode(AQ, obj(ts="2026-11-25T16:46:40.123+07:00", values={"pm25": 12.5, "pm10": 31}, seq=7))
    assert isinstance(result, Accepted)
    assert result.readings == [
        Reading(
            sensor_id="pkt-aq-001",
            kind="air_quality",
            ts=NOW + 123,
            values={"pm25": 12.5, "pm10": 31.0},
            vendor="siam-airsense",
            super_cluster="andaman",
            city="phuket",
            district="mueang-phuket",
            site="old-town",
            seq=7,
            received=NOW,
        )
    ]


@pytest.mark.parametrize("seq", [None, 0, 1, 2**63 - 1])
def test_seq_is_optional_and_kept_up_to_2_63_minus_1(seq: int | None) -> None:
    document = {"ts": NOW, "values": {"pm25": 1}} | ({} if seq is None else {"seq": seq})
    result = decode(AQ, json.dumps(document).encode())
    assert isinstance(result, Accepted), result
    assert [r.seq for r in result.readings] == [seq]
    assert decode_reading(encode_reading(result.readings[0])).seq == seq  # the spool keeps it as it came


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (NOW, NOW),
        (NOW + 0.9, NOW),
        ("2026-11-25T09:46:40Z", NOW),
        ("2026-11-25t09:46:40z", NOW),
        ("2026-11-25 16:46:40+07:00", NOW),
        ("2026-11-25T09:46:40.123456789Z", NOW + 123),
        ("2026-11-24T21:46:40-12:00", NOW),
    ],
)
def test_timestamps_are_stored_in_utc_milliseconds(ts: object, expected: int) -> None:
    result = decode(AQ, obj(ts=ts, values={"pm25": 1}))
    assert isinstance(result, Accepted), result
    assert result.readings[0].ts == expected


def test_senml_pack_groups_records_by_time() -> None:
    pack = [
        {"bn": "urn:dev:pkt-aq-001:", "bt": NOW_S, "bu": "ug/m3", "n": "pm25", "v": 12},
        {"n": "pm10", "v": 40},
        {"n": "o3", "u": "ppb", "v": 18},
        {"n": "pm25", "t": -60, "v": 11},
        {"n": "pm10", "bv": 0, "t": -60, "v": 39.5},
    ]
    result = decode(AQ, json.dumps(pack).encode())
    assert isinstance(result, Accepted), result
    assert [(r.ts, r.values) for r in result.readings] == [
        (NOW - 60_000, {"pm25": 11.0, "pm10": 39.5}),
        (NOW, {"pm25": 12.0, "pm10": 40.0, "o3": 18.0}),
    ]


def test_rejection_record_and_topic() -> None:
    payload = b"x" * 5000
    result = decode("smartcity/v1/phuket/weather/pkt-aq-001", payload)
    assert isinstance(result, Rejected)
    record = rejection_record("smartcity/v1/phuket/weather/pkt-aq-001", payload, result, NOW)
    assert record.code == "sensor_topic_mismatch"
    assert record.vendor == "siam-airsense"
    assert record.received_at == "2026-11-25T09:46:40.000Z"
    # Kept on disk: the first 512 bytes, the length and the digest; the notice carries the first 4 KiB.
    assert base64.b64decode(record.payload_b64) == payload[:512]
    assert (record.payload_bytes, record.payload_sha256) == (5000, hashlib.sha256(payload).hexdigest())
    notice = reject_notice("smartcity/v1/phuket/weather/pkt-aq-001", payload, result, NOW)
    assert base64.b64decode(notice["payload_b64"]) == payload[:4096]
    assert set(notice) == {"code", "detail", "topic", "received_at", "payload_b64"}
    assert reject_topic("smartcity/v1/phuket/weather/pkt-aq-001") == "smartcity/dlq/v1/phuket/weather/pkt-aq-001"
    assert reject_topic("junk/#") == MALFORMED_REJECT_TOPIC


# -- fuzzing ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
metrics = st.sampled_from(["pm25", "pm10", "o3", "co", "no2", "so2", "level", "PM25", "", "temperature"])
plausible_objects = st.fixed_dictionaries(
    {
        "ts": st.one_of(
            st.integers(NOW - 40 * 86_400_000, NOW + 86_400_000),
            json_values,
            st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        )
    },
    optional={
        "values": st.dictionaries(metrics, st.floats(-10, 3000) | json_values, max_size=7),
        "seq": st.integers(-5, 10**12) | json_values,
        "sensor_id": st.sampled_from(["pkt-aq-001", "pkt-aq-002", ""]),
    },
)
senml_records = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "bn": st.sampled_from(["pkt-aq-001:", "x:", "", "urn:dev:pkt-aq-001:"]),
            "bt": st.integers(NOW_S - 40 * 86_400, NOW_S + 3600) | json_values,
            "n": metrics,
            "u": st.sampled_from(["ug/m3", "ppb", "ppm", "m", "%"]),
            "v": st.floats(-10, 3000) | json_values,
            "t": st.integers(-3600, 3600),
        },
    ),
    max_size=6,
)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    plausible_objects.map(lambda v: json.dumps(v).encode()),
    senml_records.map(lambda v: json.dumps(v).encode()),
    # Invalid UTF-8 inside an otherwise valid JSON string.
    st.tuples(plausible_objects, st.binary(min_size=1, max_size=4)).map(
        lambda pair: json.dumps(pair[0]).encode()[:-1] + b', "note": "' + pair[1].replace(b'"', b"") + b'"}'
    ),
)
topics = st.one_of(
    st.sampled_from([AQ, WL, "smartcity/v1/phuket/weather/pkt-aq-001", "smartcity/v1/x/y/zz", MALFORMED_REJECT_TOPIC]),
    st.text(max_size=80),
)


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=payloads)
def test_decoder_never_raises_and_answers_with_readings_or_one_code(topic: str, payload: bytes) -> None:
    result = decode(topic, payload)
    if isinstance(result, Rejected):
        assert result.code in set(RejectCode)
        assert result.detail
        record = rejection_record(topic, payload, result, NOW)
        assert record.code == result.code.value
        return
    assert result.readings
    metric_names = {m.name: m for m in default_registry().kinds[result.sensor.kind].metrics}
    for reading in result.readings:
        assert reading.sensor_id == result.sensor.id
        assert NOW - 30 * 86_400_000 <= reading.ts <= NOW + 300_000
        for name, value in reading.values.items():
            metric = metric_names[name]
            assert math.isfinite(value) and metric.min <= value <= metric.max
    assert datetime.fromtimestamp(result.readings[0].ts / 1000, UTC).year >= 2026


# -- the fast path --------------------------------------------------------------------------
# `Contract.decode` first tries a fast path that only accepts; the general path (`_decode`) decides
# every rejection. Both must give the same answer, with byte-identical spool records.


def assert_same_answer(topic: str, payload: bytes, now: int = NOW) -> Accepted | Rejected:
    fast, general = contract.decode(topic, payload, now), contract._decode(topic, payload, now)
    if isinstance(general, Rejected):
        assert fast == general
    else:
        assert isinstance(fast, Accepted), (payload, fast)
        assert fast.sensor == general.sensor
        assert [encode_reading(r) for r in fast.readings] == [encode_reading(r) for r in general.readings]
    return general


aq_values = st.dictionaries(
    st.sampled_from(["pm25", "pm10", "o3", "co", "no2", "so2", "level"]),
    st.floats(-1, 2100) | st.integers(-1, 2100) | st.sampled_from([0.0, -0.0, 1e308, 2**53 + 1]) | json_values,
    max_size=7,
)
near_valid_objects = st.fixed_dictionaries(
    {
        "ts": st.integers(NOW - 73 * 3_600_000, NOW + 400_000)
        | st.floats(NOW - 80 * 3_600_000, NOW + 400_000)
        | st.sampled_from(["2026-11-25T09:46:40+07:00", "2026-11-25T02:46:40.123456789Z", None, True]),
        "values": aq_values,
    },
    optional={
        "seq": st.integers(-1, 2**64) | st.sampled_from([None, True, 1.0]),
        "sensor_id": st.sampled_from(["pkt-aq-001", "pkt-aq-002", None]),
        "note": st.text(max_size=5),
    },
)
near_valid_senml = st.lists(
    st.fixed_dictionaries(
        {"n": st.sampled_from(["pm25", "pm10", "o3", "co", "bad", "", "pkt-aq-001:pm10", "x/pm25"])},
        optional={
            "bn": st.sampled_from(["pkt-aq-001:", "pkt-aq-002:", "", "urn:dev:pkt-aq-001:", "x/pkt-aq-001/", 7]),
            "bt": st.integers(NOW_S - 73 * 3600, NOW_S + 400) | st.floats(0, 2e12) | st.sampled_from([None, "1"]),
            "t": st.integers(-3600, 3600) | st.floats(-1, 1) | st.none(),
            "u": st.sampled_from(["ug/m3", "ppb", "ppm", "mg/m3", None]),
            "bu": st.sampled_from(["ug/m3", "ppb", None]),
            "v": st.floats(-1, 2100) | st.integers(-1, 2100) | st.sampled_from([None, True, "1"]),
            "bv": st.sampled_from([0, 0.5, 1, None]),
            "vs": st.just("x"),
        },
    ),
    max_size=5,
)


GOOD_OBJECT = b'{"ts": %d, "values": {"pm25": 12.5}' % NOW
GOOD_RECORD = b'{"bn": "pkt-aq-001:", "bt": %d, "n": "pm25", "u": "ug/m3", "v": 12.5' % NOW_S


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        # msgspec skips an unknown field without checking its UTF-8: the fast path must not skip it.
        (GOOD_OBJECT + b', "note": "\xc3\x28"}', "invalid_json"),
        (b"[" + GOOD_RECORD + b', "x": "\xff"}]', "invalid_json"),
        (GOOD_OBJECT + b', "note": 1e999}', None),  # not a metric: the general path reads it as infinity
        (GOOD_OBJECT + b', "seq": null}', None),
        (GOOD_OBJECT + b', "seq": true}', "invalid_value"),
        (GOOD_OBJECT + b', "sensor_id": null}', None),
        (b'{"ts": %d, "values": {"pm25": 1e999}}' % NOW, "invalid_value"),
        (b'{"ts": %d.9, "values": {"pm25": 1}}' % NOW, None),
        (b"[" + GOOD_RECORD + b', "u": null}]', None),  # an explicit null unit is no unit
        (b"[" + GOOD_RECORD + b', "t": null}]', "invalid_ts"),
        (b"[" + GOOD_RECORD + b', "bv": 2}]', None),
        (b"[" + GOOD_RECORD + b"}, " + GOOD_RECORD + b"}]", "invalid_value"),  # the metric twice
        (b'[{"bn": "pkt-aq-001:", "n": "pm25", "v": 1}]', "missing_ts"),
    ],
)
def test_fast_path_edge_cases(payload: bytes, code: str | None) -> None:
    answer = assert_same_answer(AQ, payload)
    assert (answer.code.value if isinstance(answer, Rejected) else None) == code


@pytest.mark.parametrize("ts", [10**15, 10**15 + 1, -(10**15) - 1, 2**53 + 1])
def test_fast_path_keeps_the_ts_limit(ts: int) -> None:
    """A clock far in the future (received at `ts`): beyond 1e15 ms is `invalid_ts`, not the window's."""
    answer = assert_same_answer(AQ, obj(ts=ts, values={"pm25": 1}), now=ts)
    assert (answer.code if isinstance(answer, Rejected) else None) == (
        RejectCode.INVALID_TS if abs(ts) > 10**15 else None
    )


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(payloads, near_valid_objects.map(json.dumps), near_valid_senml.map(json.dumps)))
def test_fast_path_answers_as_the_general_path(payload: bytes | str) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    assert_same_answer(AQ, data)
    assert_same_answer(AQ, b" " + data)  # not the fast path's shape: the general path alone


def test_fast_path_answers_as_the_general_path_on_the_simulated_fleet() -> None:
    """Every payload format and fault of the simulator, on every kind of the registry."""
    registry = default_registry()
    start = NOW - 3_600_000
    faults = parse_faults(
        "default,malformed_json=0.02,out_of_range=0.02,unit_mismatch=0.02,ts_in_future=0.02,ts_too_old=0.02,"
        "unknown_sensor=0.02"
    )
    plan = Plan(start, start + 600_000, 3, faults, wall_origin_ms=NOW, speed=float("inf"))
    messages = list(Simulation(registry, select_sensors(registry), plan).messages())
    answers = [assert_same_answer(m.topic, m.payload, NOW) for m in messages]
    accepted = sum(isinstance(a, Accepted) for a in answers)
    assert 0.8 * len(messages) < accepted < len(messages)
