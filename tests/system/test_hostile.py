"""Hostile and broken vendors, through the real broker and a real `smartcity ingest`: nothing extra is stored.

Vendors publish, with their own accounts and at rate, their fleet's good readings
mixed with fuzzed payloads (hypothesis), oversized payloads, invalid UTF-8, deeply
nested JSON, NaN and Infinity, huge numbers, timestamps in 1970 and 2100, and
tags, fields, topics and sensor ids crafted for line-protocol injection. One
vendor publishes to another's sensor, one listens to `#`, some try wrong
passwords. Afterwards:

- every message got the answer `sensors.contract` gives offline (the oracle):
  stored, or kept in the reject store with its code, and the audit balances;
- InfluxDB holds exactly the accepted readings, with their values, and no
  measurement, tag, tag value, field or series beyond the registry's;
- the broker refused what its ACL forbids (MQTT 5 PUBACK "Not authorized"), and
  nothing of it reached ingest; the listening vendor saw its own rejections only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from deploy.audit import stored_rejections
from sensors.broker_url import BrokerAddress
from sensors.contract import MAX_PAYLOAD_BYTES, Accepted, Contract, RejectCode, Rejected, parse_topic, reject_topic
from sensors.publisher import Publisher, Tally, iso, write_manifest
from sensors.registry import Registry, Sensor, default_registry
from sensors.simulator import (
    GATEWAY_ACCOUNT,
    GATEWAY_VENDOR,
    HOUR_MS,
    Plan,
    SensorInfo,
    Simulation,
    select_sensors,
)
from storage import schema
from tests.ingest.helpers import IngestProcess, ingest_env
from tests.servers import StackHandle
from tests.system.harness import SELF_MEASUREMENTS, WriteCounter, balanced_audit, influxql, rows, seeded, until
from tests.system.report import Report, Row

pytestmark = pytest.mark.system

FUZZ_EXAMPLES = 400
RATE = 800  # messages per second
NASTY = [
    "",
    " ",
    "\n",
    "a\nb",
    "pm25\nair_quality,sensor_id=evil pm25=1 0",
    "pm25=1,evil=2",
    "x,vendor=evil",
    "x y",
    'q"uote',
    "back\\slash",
    "\\n",
    "\t",
    "\u2028",
    "\x00",
    "#",
    "🙂",
    "ค่าฝุ่น",
]


@dataclass
class Sent:
    account: str
    topic: str
    payload: bytes
    sensor_id: str  # "" when the topic names no sensor
    refused: bool = False  # the broker's ACL must refuse it
    failure: str | None = None  # the PUBACK's error, if any


# -- what hostile vendors send ------------------------------------------------------------------


def fuzzed(registry: Registry, sensors: list[Sensor], base_ms: int, count: int, seed: int) -> list[tuple[int, bytes]]:
    """`count` (sensor index, payload) pairs from hypothesis: JSON objects and SenML packs with hostile
    times, names and values, any JSON, raw bytes and JSON with a byte broken."""
    metrics = sorted({m.name for k in registry.kinds.values() for m in k.metrics})
    units = sorted({m.unit for k in registry.kinds.values() for m in k.metrics})
    text = st.text(max_size=12) | st.sampled_from(NASTY)
    numbers = (
        st.integers(min_value=-(10**40), max_value=10**40)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from([1e308, -1e308, 2**53 + 1, 2**63, 2**64, 5e-324, -0.0])
    )
    leaf = st.none() | st.booleans() | numbers | text
    anything = st.recursive(
        leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=8
    )
    valid_ms = st.integers(0, 86_400).map(lambda s: base_ms + s * 1000)
    ts = (
        valid_ms
        | valid_ms.map(lambda ms: iso(ms).replace("Z", "+07:00"))
        | st.sampled_from([0, 1000, 86_400_000, "1970-01-01T00:00:00Z", 4_102_444_800_000, "2100-01-01T00:00:00Z"])
        | st.sampled_from(["2026-13-45T99:99:99Z", "now", "1e12", -1, 10**15, 10**16])
        | anything
    )
    values = st.dictionaries(st.sampled_from(metrics) | text, numbers | anything, max_size=4) | anything
    record = st.fixed_dictionaries(
        {},
        optional={
            "bn": st.sampled_from([f"{s.id}:" for s in sensors]) | text,
            "bt": valid_ms.map(lambda ms: ms / 1000) | numbers,
            "n": st.sampled_from(metrics) | text,
            "u": st.sampled_from(units) | text,
            "v": numbers | anything,
            "t": numbers,
        },
    )
    document = (
        st.fixed_dictionaries({"ts": ts, "values": values}, optional={"seq": anything, "extra": anything})
        | st.lists(record, max_size=4)
        | anything
    )
    encoded = document.map(lambda d: json.dumps(d, allow_nan=True).encode())
    broken = st.tuples(
        encoded, st.integers(0, 10**6), st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"])
    )
    payload = encoded | st.binary(max_size=64) | broken.map(lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][1:])
    found: list[tuple[int, bytes]] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.integers(0, len(sensors) - 1), payload)
    def collect(index: int, body: bytes) -> None:
        found.append((index, body))

    collect()
    return found


def abuse(sensor: Sensor, ts: int) -> list[bytes]:
    """Hand-made payloads every platform meets sooner or later."""
    metric = f'"{default_registry().kinds[sensor.kind].metrics[0].name}"'.encode()
    t = str(ts).encode()
    return [
        # Over the contract's 16 KiB but within the broker's packet limit (larger packets: test_broker.py).
        b'{"ts": ' + t + b', "values": {' + metric + b': 1}, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}',
        b'{"ts": ' + t + b', "values": {"\xff\xfe": 1}}',  # invalid UTF-8
        b"\xc3\x28\xa0\xa1",
        b'{"ts": ' + t + b', "values": {' + metric + b": " + b"[" * 5000 + b"1" + b"]" * 5000 + b"}}",  # nesting
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b"[" * 20_000,
        b'{"ts": ' + t + b', "values": {' + metric + b": NaN}}",
        b'{"ts": ' + t + b', "values": {' + metric + b": Infinity}}",
        b'{"ts": ' + t + b', "values": {' + metric + b": -Infinity}}",
        b'{"ts": ' + t + b', "values": {' + metric + b": 1e999}}",  # huge numbers
        b'{"ts": ' + t + b', "values": {' + metric + b": 1" + b"0" * 400 + b"}}",
        b'{"ts": 1' + b"0" * 5000 + b', "values": {' + metric + b": 1}}",
        b'{"ts": 0, "values": {' + metric + b": 1}}",  # 1970
        b'{"ts": "1970-01-01T00:00:00Z", "values": {' + metric + b": 1}}",
        b'{"ts": 4102444800000, "values": {' + metric + b": 1}}",  # 2100
        b'{"ts": "2100-01-01T00:00:00+07:00", "values": {' + metric + b": 1}}",
        # line-protocol injection through values, metric names, seq and SenML names
        b'{"ts": ' + t + b', "values": {' + metric + b': "1\\nair_quality,sensor_id=evil pm25=1"}}',
        b'{"ts": ' + t + b', "values": {"pm25 evil=1": 1}}',
        b'{"ts": ' + t + b', "values": {"pm25,vendor=evil": 1}}',
        b'{"ts": ' + t + b', "values": {"pm25\\nweather temperature=1": 1}}',
        b'{"ts": ' + t + b', "values": {' + metric + b': 1}, "seq": "1\\nx"}',
        json.dumps([{"bn": f"{sensor.id},vendor=evil:", "bt": ts / 1000, "n": "pm25", "v": 1}]).encode(),
        json.dumps([{"bn": f"{sensor.id}:", "bt": ts / 1000, "n": "pm25\nevil", "v": 1}]).encode(),
    ]


BAD_TOPICS = [
    "smartcity/v1/phuket/air_quality/pkt-aq-001,vendor=evil",
    "smartcity/v1/phuket/air_quality/pkt-aq-001 pm25=1",
    "smartcity/v1/phuket/air_quality/PKT-AQ-001",
    "smartcity/v1/phuket/air_quality/pkt-aq-001/extra",
    "smartcity/v1/phuket/air_quality",
    "smartcity/v1/phu ket/air_quality/pkt-aq-001",
    "smartcity/v1/phuket/air_quality/pkt-aq-999",  # unknown sensor
    "smartcity/v1/chiang-mai/air_quality/pkt-aq-001",  # sensor_topic_mismatch
]
# Control characters in a topic: Mosquitto drops the connection ("Malformed packet"); ingest never sees them.
CONTROL_TOPICS = ["smartcity/v1/phuket/air_quality/pkt\naq-001", "smartcity/v1/phuket/air_quality/\x7f"]


# -- broker clients ---------------------------------------------------------------------------------


class Listener:
    """A vendor's MQTT 5 client subscribed to `topic` (e.g. `#`): what it receives."""

    def __init__(self, stack: StackHandle, user: str, topic: str) -> None:
        self.topics: list[str] = []
        self.client = stack.mqtt_client(user)
        self.client.on_message = lambda _c, _u, message: self.topics.append(message.topic)
        granted = threading.Event()
        self.client.on_subscribe = lambda *args: granted.set()
        self.client.subscribe(topic, qos=1)
        assert granted.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connack(stack: StackHandle, user: str | None, password: str | None) -> str:
    """The broker's answer to a connection with these credentials (MQTT 5 reason)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if user is not None:
        client.username_pw_set(user, password)
    answer: list[str] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.append(str(reason))
    client.connect("127.0.0.1", stack.mqtt_port)
    client.loop_start()
    try:
        until(lambda: bool(answer), 10, f"the CONNACK for {user!r}")
    finally:
        client.disconnect()
        client.loop_stop()
    return answer[0]


def malformed(stack: StackHandle, topic: str) -> str:
    """Publish to `topic` as admin; returns why the broker dropped the connection (no PUBACK comes)."""
    client = stack.mqtt_client()
    reasons: list[str] = []
    client.on_disconnect = lambda _c, _u, _f, reason, _p: reasons.append(str(reason))
    client.on_publish = lambda *args: reasons.append("PUBACK")
    client.publish(topic, b'{"ts": 0, "values": {}}', qos=1)
    try:
        until(lambda: bool(reasons), 10, f"the broker's answer to {topic!r}")
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0]


def publish_311(stack: StackHandle, user: str, topic: str, payload: bytes) -> None:
    """Publish as an MQTT 3.1.1 client (which gets no error back for a topic the ACL forbids)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, stack.mqtt_password(user))
    client.connect("127.0.0.1", stack.mqtt_port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


# -- the scenario ---------------------------------------------------------------------------------


def test_hostile_vendors_change_nothing_but_their_own_rejections(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    started = time.monotonic()
    rng = seeded(seed, "hostile")
    registry = default_registry()
    contract = Contract(registry)
    home = tmp_path / "home"
    now = int(time.time() * 1000)
    victims = select_sensors(registry, 40)
    spy_vendor = victims[0].vendor
    others = [s for s in registry.sensors.values() if s.vendor != spy_vendor and s not in victims]

    # Good readings of the last hours, and the hostile messages (unique times 60 h back, inside the 72 h window).
    good_start = now - now % HOUR_MS - 2 * HOUR_MS
    plan = Plan(good_start, good_start + 40 * 60_000, seed)
    sent = [Sent(m.account, m.topic, m.payload, m.sensor_id) for m in Simulation(registry, victims, plan).messages()]
    hostile_ms = now - 60 * HOUR_MS
    hostile = [(victims[i], body) for i, body in fuzzed(registry, victims, hostile_ms, FUZZ_EXAMPLES, seed)]
    hostile += [(s, body) for n, s in enumerate(victims[:5]) for body in abuse(s, hostile_ms + 100_000 + n)]
    hostile_sent = [Sent(s.vendor, s.topic, body, s.id) for s, body in hostile]
    hostile_sent += [
        Sent(GATEWAY_ACCOUNT, topic, b'{"ts": %d, "values": {"pm25": 1}}' % now, "") for topic in BAD_TOPICS
    ]
    # A vendor publishing to another vendor's sensor: a valid reading, refused by the broker.
    foreign = next(s for s in others if s.kind == victims[0].kind)
    values = {m.name: (m.min + m.max) / 2 for m in registry.kinds[foreign.kind].metrics}
    trespass = json.dumps({"ts": hostile_ms - 1, "values": values}).encode()
    assert isinstance(contract.decode(foreign.topic, trespass, now), Accepted)
    hostile_sent.append(Sent(spy_vendor, foreign.topic, trespass, foreign.id, refused=True))
    for item in hostile_sent:
        sent.insert(rng.randrange(len(sent) + 1), item)

    # The oracle: what the contract says of each message; accepted (sensor, ts) must stay unique.
    answers: dict[int, Accepted | Rejected] = {}  # of the messages the broker lets through
    expected: dict[tuple[str, int], dict[str, float]] = {}
    kept: list[Sent] = []
    seen: set[tuple[str, bytes]] = set()
    for item in sent:
        if (item.topic, item.payload[:4096]) in seen:
            continue  # the reject store cannot tell a second identical message from a QoS 1 redelivery
        seen.add((item.topic, item.payload[:4096]))
        answer = contract.decode(item.topic, item.payload, now)
        if isinstance(answer, Accepted) and not item.refused:
            keys = [(r.sensor_id, r.ts) for r in answer.readings]
            if any(k in expected for k in keys) or len(set(keys)) < len(keys):
                continue  # a second value for the same (sensor, ts): which one is stored is not the point here
            expected.update((k, r.values) for k, r in zip(keys, answer.readings, strict=True))
        if not item.refused:
            answers[len(kept)] = answer
        kept.append(item)
    sent = kept

    info = {s.id: SensorInfo(s.vendor, s.city, s.kind, s.topic) for s in registry.sensors.values()}
    tally = Tally(info)

    def on_ack(token: tuple[str, int, str], failure: str | None) -> None:
        item = sent[token[1]]
        item.failure = failure
        answer = answers.get(token[1])
        if answer is None or failure is not None:
            tally.ack((item.sensor_id, 0, "refused"), failure or "accepted by the broker")
        elif isinstance(answer, Accepted):
            for r in answer.readings:
                tally.ack((r.sensor_id, r.ts // HOUR_MS, "good"), None)
        elif parts := parse_topic(item.topic):  # the audit sees rejections of topics that name a sensor
            info.setdefault(parts.sensor_id, SensorInfo(GATEWAY_VENDOR, parts.city, parts.kind, item.topic))
            tally.ack((parts.sensor_id, 0, answer.code.value), None)

    accounts = sorted({item.account for item in sent})
    passwords = {a: private_stack.mqtt_password(a) for a in accounts}
    writes = WriteCounter(private_stack)
    env = ingest_env(private_stack, home, client_id="sys-hostile")
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        spy = Listener(private_stack, spy_vendor, "#")
        sent_from = time.time()
        address = BrokerAddress("127.0.0.1", private_stack.mqtt_port, tls=False)
        with Publisher(address, passwords, on_ack, max_inflight=200, client_prefix="hostile") as publisher:
            for n, item in enumerate(sent):
                while time.time() < sent_from + n / RATE:
                    publisher.poll(0.005)
                assert publisher.publish(item.account, item.topic, item.payload, (item.sensor_id, n, ""))
            assert publisher.flush(60) == []
        publish_311(private_stack, spy_vendor, foreign.topic, trespass)  # no PUBACK error in MQTT 3.1.1
        assert [malformed(private_stack, topic) for topic in CONTROL_TOPICS] == ["Malformed packet"] * 2
        # Wrong credentials never get in.
        assert connack(private_stack, spy_vendor, "not-the-password") in {"Bad user name or password", "Not authorized"}
        assert connack(private_stack, "evil", "evil") in {"Bad user name or password", "Not authorized"}
        assert connack(private_stack, None, None) in {"Bad user name or password", "Not authorized"}

        rejected = [a for a in answers.values() if isinstance(a, Rejected)]
        want = Counter((sent[n].topic, a.code.value) for n, a in answers.items() if isinstance(a, Rejected))

        def missing_rejections() -> Counter[tuple[str, str]]:
            return want - Counter((r.topic, r.code) for r in stored_rejections(home / "spool"))

        try:
            until(lambda: not missing_rejections(), 60, "every rejection")
        except AssertionError:
            stored = Counter((r.topic, r.code) for r in stored_rejections(home / "spool"))
            raise AssertionError(
                f"missing {list(missing_rejections().items())[:5]}, unexpected {list((stored - want).items())[:5]}"
            ) from None
        until(lambda: stored_points(private_stack, registry) == expected, 60, "every accepted reading")
        own_rejects = sum(1 for n, a in answers.items() if isinstance(a, Rejected) and sent[n].account == spy_vendor)
        until(lambda: len(spy.topics) >= own_rejects, 30, "the spy's own reject notices")
        time.sleep(0.5)  # anything else the broker might still deliver to the spy
        spy.close()
        assert ingest.terminate() == 0
    log = ingest.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]

    # The broker refused the trespass, and nothing of it reached ingest.
    assert [i.failure for i in sent if i.refused] == ["Not authorized"]
    assert [i.failure for i in sent if not i.refused and i.failure] == []
    assert not {r.topic for r in stored_rejections(home / "spool")} & {foreign.topic, *CONTROL_TOPICS}
    # The vendor listening to '#' got its own rejections, and nothing else.
    own_reject_topics = {reject_topic(s.topic) for s in registry.sensors_of(vendor=spy_vendor)}
    assert set(spy.topics) <= own_reject_topics, sorted(set(spy.topics) - own_reject_topics)[:5]
    assert len(spy.topics) >= own_rejects and own_rejects > 1
    # Every rejection is kept with the contract's code (bad topics included).
    codes = Counter(r.code for r in stored_rejections(home / "spool"))
    assert codes == Counter(a.code.value for a in rejected)

    manifest = home / "manifests" / "hostile.json"
    times = [ts for _, ts in expected]
    run = {"mode": "replay", "started_at": iso(sent_from * 1000), "finished_at": iso(time.time() * 1000 + 1000)}
    run |= {"from": iso(min(times) - min(times) % 60_000), "to": iso(max(times) + 1000 - max(times) % 1000)}
    write_manifest(manifest, tally.manifest(run, []))
    result = balanced_audit(private_stack, home, [manifest], registry)
    extra = schema_violations(private_stack, registry, {s for s, _ in expected}, {"sys-hostile"})
    assert extra == []
    reliability.add(
        Row(
            "hostile vendors: fuzz, oversized, bad UTF-8, nesting, NaN, 1970/2100, injection, ACL, passwords",
            len(hostile_sent) + len(CONTROL_TOPICS) + 4,
            len(sent),
            None,
            result.total().missing,
            writes.duplicates(),
            [],
            extra=len(extra) + result.total().extra,
            seconds=time.monotonic() - started,
        )
    )


def stored_points(stack: StackHandle, registry: Registry) -> dict[tuple[str, int], dict[str, float]]:
    """(sensor_id, ts) -> field values of every raw point of every kind."""
    found: dict[tuple[str, int], dict[str, float]] = {}
    for kind in registry.kinds:
        for series in influxql(stack, f'SELECT * FROM "raw"."{kind}"'):
            for row in rows(series):
                metrics = {m.name for m in registry.kinds[kind].metrics}
                # InfluxDB's JSON writes a float field without a fraction as an integer (595.0 -> 595).
                values = {k: float(v) for k, v in row.items() if k in metrics and v is not None}
                found[(row["sensor_id"], row["time"])] = values
    return found


def schema_violations(stack: StackHandle, registry: Registry, sensors: set[str], instances: set[str]) -> list[str]:
    """Measurements, tags, tag values, fields and series InfluxDB holds beyond what the registry explains."""
    known_values = (
        set(registry.sensors)
        | set(registry.vendors)
        | set(registry.cities)
        | set(registry.districts)
        | {s.site for s in registry.sensors.values()}
        | {s.super_cluster for s in registry.sensors.values()}
        | {c.value for c in RejectCode}
        | {schema.UNKNOWN_VENDOR}
        | instances
    )
    problems = []
    for series in influxql(stack, 'SHOW MEASUREMENTS ON "smartcity"'):
        for (name,) in series["values"]:
            if name in SELF_MEASUREMENTS:
                allowed_fields = None  # the service's own counters: any identifier-like name
            elif name in registry.kinds:
                allowed_fields = {m.name for m in registry.kinds[name].metrics}
            else:
                problems.append(f"measurement {name!r}")
                continue
            for fields in influxql(stack, f'SHOW FIELD KEYS FROM "raw"."{name}"'):
                for field, kind in fields["values"]:
                    ok = re.fullmatch(r"[a-z0-9_]+", field) if allowed_fields is None else field in allowed_fields
                    if not ok or (allowed_fields is not None and kind != "float"):
                        problems.append(f"{name} field {field!r} ({kind})")
            for tags in influxql(stack, f'SHOW TAG KEYS FROM "raw"."{name}"'):
                keys = {v[0] for v in tags["values"]}
                allowed_tags = set(schema.SENSOR_TAGS) if name in registry.kinds else {"instance", "vendor", "code"}
                problems += [f"{name} tag {key!r}" for key in sorted(keys - allowed_tags)]
            for values in influxql(stack, f'SHOW TAG VALUES FROM "raw"."{name}" WITH KEY =~ /.*/'):
                problems += [f"{name} {k}={v!r}" for k, v in values["values"] if v not in known_values]
            if name in registry.kinds:
                for series_ in influxql(stack, f'SHOW SERIES FROM "raw"."{name}"'):
                    for (key,) in series_["values"]:
                        tags = dict(part.split("=", 1) for part in key.split(",")[1:])
                        sensor = registry.sensors.get(tags.get("sensor_id", ""))
                        if sensor is None or sensor.id not in sensors:
                            problems.append(f"series {key!r}")
                        elif any(tags.get(t) != getattr(sensor, t.removeprefix("sensor_")) for t in schema.SENSOR_TAGS):
                            problems.append(f"series {key!r} does not match the registry")
    return problems
