"""The simulator's messages, offline: they follow the contract, faults get their codes, values look like the cities."""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sensors.contract import Accepted, Contract, RejectCode, Rejected
from sensors.faults import DEFAULT_FAULTS, EXPECTED_CODE, Fault, FaultSpecError, parse_faults
from sensors.reading import Reading
from sensors.registry import BUILTIN_DIR, Registry, Sensor, default_registry, load_registry
from sensors.simulator import GATEWAY_ACCOUNT, GATEWAY_VENDOR, Message, Plan, Simulation, select_sensors
from tests.sensors.test_registry import NEW_KIND

REGISTRY = default_registry()
CONTRACT = Contract(REGISTRY)
HOUR = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


NOW = ms("2026-03-20T00:00:00")


def replay(
    start: str,
    minutes: float,
    *,
    sensors: list[Sensor] | None = None,
    seed: int = 1,
    faults: dict[Fault, float] | None = None,
    every_s: float | None = None,
    registry: Registry = REGISTRY,
) -> tuple[Simulation, list[Message]]:
    """All messages of a replay (as fast as possible, published at NOW); `every_s` thins the reporting grid."""
    begin = ms(start)
    chosen = sensors if sensors is not None else select_sensors(registry)
    scale = 1.0
    if every_s is not None:
        scale = min(registry.kinds[s.kind].interval_s for s in chosen) / every_s
    plan = Plan(begin, begin + int(minutes * 60_000), seed, faults or {}, scale, wall_origin_ms=NOW, speed=float("inf"))
    simulation = Simulation(registry, chosen, plan)
    return simulation, list(simulation.messages())


def readings(messages: list[Message], contract: Contract = CONTRACT) -> list[Reading]:
    """Decode every message with the contract as ingest would, right after its reading was taken."""
    out = []
    for m in messages:
        decoded = contract.decode(m.topic, m.payload, m.ts + 1_000)
        assert isinstance(decoded, Accepted), (m, decoded)
        out.extend(decoded.readings)
    return out


# -- the contract -------------------------------------------------------------------------------


def test_good_messages_decode_exactly_as_intended_in_both_payload_formats() -> None:
    simulation, messages = replay("2026-03-19T10:00:00", 20)
    assert {m.category for m in messages} == {"good"}
    formats: Counter[str] = Counter()
    per_sensor: dict[str, list[int]] = defaultdict(list)
    for m in messages:
        sensor = REGISTRY.sensors[m.sensor_id]
        assert m.topic == sensor.topic and m.account == sensor.vendor
        decoded = CONTRACT.decode(m.topic, m.payload, NOW)
        assert isinstance(decoded, Accepted), (m.payload, decoded)
        [reading] = decoded.readings
        assert reading.ts == m.ts and reading.sensor_id == sensor.id
        kind = REGISTRY.kinds[sensor.kind]
        assert set(reading.values) == {metric.name for metric in kind.metrics}
        format_ = REGISTRY.vendors[sensor.vendor].payload
        formats[format_] += 1
        assert (json.loads(m.payload)[0]["bn"] == f"{sensor.id}:") if format_ == "senml" else reading.seq is not None
        per_sensor[sensor.id].append(m.ts)
    assert formats["json"] > 1000 and formats["senml"] > 1000
    # Every sensor reports on its kind's interval, in order, on whole seconds.
    assert len(per_sensor) == len(simulation.sensors) == len(REGISTRY.sensors)
    for sensor_id, stamps in per_sensor.items():
        interval = REGISTRY.kinds[REGISTRY.sensors[sensor_id].kind].interval_s * 1000
        assert all(b - a == interval for a, b in itertools.pairwise(stamps)), sensor_id
        assert all(t % 1000 == 0 for t in stamps)


def test_each_fault_gets_its_expected_reject_code() -> None:
    faults = {f: 0.08 for f in Fault if f is not Fault.SILENT} | {Fault.SILENT: 0.1}
    simulation, messages = replay("2026-03-19T10:00:00", 30, faults=faults)
    seen: Counter[str] = Counter()
    first_payload: dict[tuple[str, bytes], Message] = {}
    first_reading: dict[tuple[str, int], Message] = {}
    for m in messages:
        # Ingest receives the message when it is published (at NOW for a max-speed replay).
        decoded = CONTRACT.decode(m.topic, m.payload, NOW + 2_000)
        seen[m.category] += 1
        if m.category in {"good", "late", "out_of_order", "duplicate"}:
            assert isinstance(decoded, Accepted), (m, decoded)
            assert [r.ts for r in decoded.readings] == [m.ts]
            first_reading.setdefault((m.sensor_id, m.ts), m)
        elif m.category == "conflict":
            # Valid on its own; ingest refuses it because the same (sensor, ts) was sent before with other values.
            assert isinstance(decoded, Accepted), (m, decoded)
            original = first_reading[(m.sensor_id, m.ts)]
            assert original.category == "good" and original.order < m.order and original.payload != m.payload
        else:
            assert isinstance(decoded, Rejected) and decoded.code.value == m.category, (m, decoded)
        if m.category == "duplicate":
            original = first_payload[(m.topic, m.payload)]
            assert original.category in {"good", "late", "out_of_order"} and original.order < m.order
        first_payload.setdefault((m.topic, m.payload), m)
        if m.category == "unknown_sensor":
            assert m.account == GATEWAY_ACCOUNT and simulation.info[m.sensor_id].vendor == GATEWAY_VENDOR
            assert m.sensor_id not in REGISTRY.sensors
        else:
            assert m.account == REGISTRY.sensors[m.sensor_id].vendor
    assert set(seen) == {"good", "late", "out_of_order", "duplicate", *(c.value for c in EXPECTED_CODE.values())}
    for code in EXPECTED_CODE.values():
        assert seen[code.value] > 50, code
    # Silent sensors publish nothing at all.
    assert simulation.silent and not {m.sensor_id for m in messages} & set(simulation.silent)
    # Late readings arrive after newer ones of the same sensor, out-of-order ones after the next (unless
    # that one is held back too, or the range ends first).
    last_ts: dict[str, int] = {}
    overtaken: Counter[str] = Counter()
    for m in messages:
        if m.category in {"late", "out_of_order"} and last_ts.get(m.sensor_id, 0) > m.ts:
            overtaken[m.category] += 1
        last_ts[m.sensor_id] = max(last_ts.get(m.sensor_id, 0), m.ts)
    assert overtaken["late"] > 0.9 * seen["late"] and overtaken["out_of_order"] > 0.7 * seen["out_of_order"]


def test_unit_mismatch_and_clock_faults_look_like_real_firmware_mistakes() -> None:
    faults = {Fault.UNIT_MISMATCH: 0.3, Fault.TS_TOO_OLD: 0.3, Fault.TS_IN_FUTURE: 0.3}
    _, messages = replay("2026-03-19T10:00:00", 5, faults=faults)
    for m in messages:
        document = json.loads(m.payload)
        if m.category == "unit_mismatch":
            assert isinstance(document, list)  # units travel only in SenML, whatever the vendor's usual format
        elif m.category == "ts_too_old":
            seconds = document["ts"] if isinstance(document, dict) else document[0]["bt"]
            assert seconds < 1e12  # epoch seconds sent as milliseconds, or a clock reset to 2000
        elif m.category == "ts_in_future":
            ts = document["ts"] if isinstance(document, dict) else document[0]["bt"] * 1000
            assert ts == NOW + 7 * HOUR  # local time sent as UTC, relative to when it is published


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_same_payloads_in_any_chunking_and_order() -> None:
    faults = dict(DEFAULT_FAULTS)
    sensors = select_sensors(REGISTRY, 60)
    _, first = replay("2026-03-19T10:00:00", 30, sensors=sensors, faults=faults)
    _, again = replay("2026-03-19T10:00:00", 30, sensors=sensors, faults=faults)
    assert [(m.topic, m.payload, m.category) for m in first] == [(m.topic, m.payload, m.category) for m in again]
    _, other_seed = replay("2026-03-19T10:00:00", 30, sensors=sensors, faults=faults, seed=2)
    assert {m.payload for m in first}.isdisjoint({m.payload for m in other_seed})
    # Two halves replayed in reverse order hold the same readings as the whole range; only `seq`
    # differs: each run is a restart of every sensor's counter.
    _, late_half = replay("2026-03-19T10:15:00", 15, sensors=sensors)
    _, early_half = replay("2026-03-19T10:00:00", 15, sensors=sensors)
    _, whole = replay("2026-03-19T10:00:00", 30, sensors=sensors)
    assert sorted(without_seq(m) for m in late_half + early_half) == sorted(without_seq(m) for m in whole)


def without_seq(message: Message) -> str:
    document = json.loads(message.payload)
    if isinstance(document, dict):
        document.pop("seq")
    return json.dumps(document, sort_keys=True)


def test_seq_counts_each_sensors_readings_from_0_and_the_drop_fault_skips_numbers() -> None:
    sensors = [s for s in select_sensors(REGISTRY, 60) if REGISTRY.vendors[s.vendor].payload == "json"]
    simulation, messages = replay("2026-03-19T10:00:00", 60, sensors=sensors, faults={Fault.DROP: 0.05})
    seqs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for m in messages:
        seqs[m.sensor_id].append((m.ts, json.loads(m.payload)["seq"]))
    skipped = 0
    for sensor_id, numbered in seqs.items():
        numbered.sort()
        assert numbered[0][1] == 0 or simulation.dropped[sensor_id]  # a counter starts at 0 with the run
        last = numbered[-1][1] + 1  # numbers used, counting those dropped before the last one sent
        assert last - len(numbered) <= simulation.dropped[sensor_id]
        skipped += last - len(numbered)
    assert 0 < skipped <= sum(simulation.dropped.values())
    assert sum(simulation.dropped.values()) == pytest.approx(0.05 * (len(messages) + skipped), rel=0.3)
    # A torn payload (`malformed_json`) still names its seq: it comes first.
    _, torn = replay("2026-03-19T10:00:00", 5, sensors=sensors, faults={Fault.MALFORMED_JSON: 1.0})
    assert torn and all(re.match(rb'\{"seq":\d+,', m.payload) for m in torn)


def test_a_live_run_equals_a_replay_of_the_same_minutes() -> None:
    sensors = select_sensors(REGISTRY, 40)
    start = ms("2026-03-19T10:00:00")
    live = Simulation(REGISTRY, sensors, Plan(start, start + 600_000))
    _, replayed = replay("2026-03-19T10:00:00", 10, sensors=sensors)
    assert [m.payload for m in live.messages()] == [m.payload for m in replayed]


def test_sensor_subsets_are_spread_over_cities_and_kinds() -> None:
    subset = select_sensors(REGISTRY, 16)
    assert {(s.city, s.kind) for s in subset} == {(s.city, s.kind) for s in REGISTRY.sensors.values()}
    assert select_sensors(REGISTRY, 16) == subset
    assert select_sensors(REGISTRY, 10_000) == select_sensors(REGISTRY)
    assert len(select_sensors(REGISTRY)) == len(REGISTRY.sensors)


# -- what the data looks like --------------------------------------------------------------------


def values_of(kind: str, city: str, start: str, days: float, every_s: float) -> list[Reading]:
    _, messages = replay(start, days * 1440, sensors=REGISTRY.sensors_of(kind=kind, city=city), every_s=every_s)
    return readings(messages)


def test_chiang_mai_burning_season_haze() -> None:
    march = values_of("air_quality", "chiang-mai", "2026-03-01T00:00:00", 31, every_s=3 * 3600)
    july = values_of("air_quality", "chiang-mai", "2026-07-01T00:00:00", 31, every_s=3 * 3600)
    phuket = values_of("air_quality", "phuket", "2026-03-01T00:00:00", 31, every_s=3 * 3600)
    pm25 = statistics.mean(r.values["pm25"] for r in march)
    assert pm25 > 75
    assert statistics.mean(r.values["pm25"] for r in july) < 30
    assert statistics.mean(r.values["pm25"] for r in phuket) < 30
    # PM10 and CO rise with PM2.5 during the haze.
    assert statistics.correlation([r.values["pm25"] for r in march], [r.values["pm10"] for r in march]) > 0.9
    assert statistics.correlation([r.values["pm25"] for r in march], [r.values["co"] for r in march]) > 0.5


def test_phuket_monsoon_rain_and_floods() -> None:
    january = values_of("weather", "phuket", "2026-01-01T00:00:00", 31, every_s=1800)
    june = values_of("weather", "phuket", "2026-06-01T00:00:00", 30, every_s=1800)
    per_sensor = len(REGISTRY.sensors_of(kind="weather", city="phuket"))
    rain_jan = sum(r.values["rainfall"] for r in january) / per_sensor
    rain_jun = sum(r.values["rainfall"] for r in june) / per_sensor
    assert rain_jun > 4 * rain_jan and 120 < rain_jun < 600  # mm in the month at one station
    gauges = values_of("water_level", "phuket", "2026-09-01T00:00:00", 30, every_s=1800)
    warnings = {s.site: REGISTRY.threshold(s.site, "level") for s in REGISTRY.sensors_of(kind="water_level")}
    above: Counter[str] = Counter()
    for r in gauges:
        level = warnings[r.site]
        assert level is not None
        above["warning"] += r.values["level"] > level.warning
        above["danger"] += r.values["level"] > level.danger
    assert 0 < above["danger"] < above["warning"] < 0.1 * len(gauges)
    dry = values_of("water_level", "phuket", "2026-02-01T00:00:00", 28, every_s=4 * 3600)
    assert all(r.values["level"] < warnings[r.site].warning for r in dry)  # type: ignore[union-attr]


def test_rush_hours_noise_parking_bins_and_meters() -> None:
    def local_hour(r: Reading) -> int:
        return (r.ts // HOUR + 7) % 24

    def mean_at(rows: list[Reading], metric: str, hour: int) -> float:
        return statistics.mean(r.values[metric] for r in rows if local_hour(r) == hour)

    # A week from Monday 2026-03-02, every 15 minutes.
    traffic = values_of("traffic", "phuket", "2026-03-02T00:00:00", 5, every_s=900)
    assert mean_at(traffic, "vehicle_count", 8) > 3 * mean_at(traffic, "vehicle_count", 3)
    assert mean_at(traffic, "mean_speed", 8) < mean_at(traffic, "mean_speed", 3)
    noise = values_of("noise", "phuket", "2026-03-02T00:00:00", 5, every_s=900)
    assert mean_at(noise, "laeq", 8) > mean_at(noise, "laeq", 3) + 8
    parking = values_of("parking", "chiang-mai", "2026-03-02T00:00:00", 2, every_s=900)
    assert all(r.values["occupied"] <= r.values["capacity"] for r in parking)
    assert mean_at(parking, "occupied", 13) > 3 * mean_at(parking, "occupied", 4)
    bins = sorted(values_of("waste_bin", "phuket", "2026-03-02T00:00:00", 7, every_s=1800), key=lambda r: r.ts)
    steps: Counter[str] = Counter()
    by_bin: dict[str, list[float]] = defaultdict(list)
    for r in bins:
        by_bin[r.sensor_id].append(r.values["fill_level"])
    for fills in by_bin.values():
        for a, b in itertools.pairwise(fills):
            steps["emptied" if b < a - 30 else "filling" if b >= a - 3 else "odd"] += 1
    assert steps["emptied"] > len(by_bin) and steps["odd"] == 0
    meters = sorted(values_of("energy", "chiang-mai", "2026-04-01T00:00:00", 3, every_s=600), key=lambda r: r.ts)
    by_meter: dict[str, list[Reading]] = defaultdict(list)
    for r in meters:
        by_meter[r.sensor_id].append(r)
    for rows in by_meter.values():
        counter = [r.values["energy"] for r in rows]
        assert all(b >= a for a, b in itertools.pairwise(counter))  # a kWh meter never runs back
        used = counter[-1] - counter[0]
        mean_kw = statistics.mean(r.values["power"] for r in rows)
        assert used == pytest.approx(mean_kw * (rows[-1].ts - rows[0].ts) / HOUR, rel=0.1)
        assert mean_at(rows, "power", 14) > mean_at(rows, "power", 4)


def test_a_new_kind_in_an_extra_file_gets_plausible_values_with_no_code(tmp_path: Path) -> None:
    extra = tmp_path / "river.yaml"
    extra.write_text(NEW_KIND)
    registry = load_registry([BUILTIN_DIR, extra])
    assert any(s.kind == "river_flow" for s in select_sensors(registry, 20))
    flows = registry.sensors_of(kind="river_flow")
    _, messages = replay("2026-03-19T00:00:00", 2 * 1440, sensors=flows, registry=registry, every_s=600)
    by_sensor: dict[str, list[float]] = defaultdict(list)
    for r in readings(messages, Contract(registry)):
        by_sensor[r.sensor_id].append(r.values["discharge"])
    assert {m.account for m in messages} == {"flowtech"}
    assert all(json.loads(m.payload)[0]["u"] == "m3/s" for m in messages)  # flowtech sends SenML
    for values in by_sensor.values():
        assert min(values) >= 0 and max(values) <= 5000 and len(set(values)) > 0.9 * len(values)
        steps = [abs(b - a) for a, b in itertools.pairwise(values)]
        assert statistics.median(steps) < 0.1 * (max(values) - min(values))  # a walk, not white noise


# -- --faults ---------------------------------------------------------------------------------------


def test_fault_specs() -> None:
    assert parse_faults("none") == {}
    assert parse_faults("default") == DEFAULT_FAULTS
    assert parse_faults("default,duplicate=0.5,silent=0") == {
        **{f: r for f, r in DEFAULT_FAULTS.items() if f is not Fault.SILENT},
        Fault.DUPLICATE: 0.5,
    }
    assert parse_faults("malformed_json=0.01, out_of_range=0.02") == {
        Fault.MALFORMED_JSON: 0.01,
        Fault.OUT_OF_RANGE: 0.02,
    }
    for spec, message in (
        ("bogus=0.1", "unknown fault 'bogus'"),
        ("late=2", "from 0 to 1"),
        ("late", "from 0 to 1"),
        ("late=0.6,out_of_order=0.6", "add up to 1.2"),
    ):
        with pytest.raises(FaultSpecError, match=message):
            parse_faults(spec)
    assert {f.value for f in EXPECTED_CODE} <= {f.value for f in Fault}
    assert all(isinstance(code, RejectCode) for code in EXPECTED_CODE.values())
