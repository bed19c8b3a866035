"""Incremental follow at 10x the pilot fleet (6,100 sensors) against the real InfluxDB.

The fleet is the built-in registry with every fleet rule's count times ten
(`sensors/registry/scaled.py`). Every sensor reports at its kind's interval from five
minutes before the last ended clock hour B: air-quality sensors until B+46 min (the 45
readings that make an hour count in the AQI), the other kinds until B+20 min (their
density is not what scales; each cycle re-aggregates the hours it touches, so readings
cost time in every cycle). About 145k readings; three follow cycles take them (the
module's fixture):

1. in this process: up to B+10 min;
2. a `smartcity pipeline run --follow` process, killed with SIGKILL once its cycle is
   checkpointed: the rest of the fleet's readings, a late stretch of the hour before B
   from two sensors, and 200 QoS 1 redeliveries of readings cycle 1 took;
3. in this process: the last minutes of a handful of sensors (N readings), held back so far.

Then the follow database must hold exactly the points that one bounded run over the same
spool writes, and cycle 3 must write O(N) points: at most MAX_POINTS_PER_READING each,
and as many as the same N readings write over the pilot fleet's history, although it
re-aggregates an hour of 6,100 sensors. The in-process cycles run on a clock stopped at the
start, so a clock hour that ends during the test adds no health hour to them.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from pipelines.run import Plan, RunReport, run_plan
from pipelines.settings import PIPELINES, PipelineSettings
from sensors.reading import Reading
from sensors.registry import Registry
from sensors.registry.scaled import write_scaled_registry
from storage.bootstrap import bootstrap
from storage.settings import InfluxSettings
from tests.pipelines.spooldata import HOUR, MINUTE, fleet_readings, write_segment
from tests.pipelines.test_incremental_it import (
    MAX_POINTS_PER_READING,
    follow_once,
    follow_until_checkpoint_then_kill_9,
    stored,
)
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

SCALE = 10
FOLLOW_DB, BATCH_DB, PILOT_DB = "scale_follow", "scale_batch", "scale_follow_pilot"
# Cycle 3's readings: the last minutes of a sensor of each kind but waste bins (every 10 min); pilot ids.
HANDFUL = frozenset(
    {"pkt-aq-002", "cnx-aq-005", "pkt-wx-003", "cnx-wl-002", "pkt-tf-004", "cnx-nz-001", "pkt-pk-002", "cnx-en-003"}
)
HANDFUL_MIN = 6
# Cycle 2's late stretch: readings of the hour before B that arrive with the fleet's readings after B+10 min.
LATE = ("pkt-aq-001", "pkt-wl-001")


@dataclass(frozen=True)
class Followed:
    registry: Registry
    settings: PipelineSettings
    hour_b: int
    readings: list[Reading]  # every reading, once each, in time order
    handful: list[Reading]  # cycle 3's
    last_cycle: RunReport


@pytest.fixture(scope="module")
def followed(stack: StackHandle, tmp_path_factory: pytest.TempPathFactory) -> Followed:
    tmp = tmp_path_factory.mktemp("incremental-x10")
    registry_dir = tmp / "registry"
    registry = write_scaled_registry(registry_dir, SCALE)
    now_s = time.time()
    b = int(now_s * 1000) // HOUR * HOUR - HOUR
    aq = [s for s in registry.sensors.values() if s.kind == "air_quality"]
    others = [s for s in registry.sensors.values() if s.kind != "air_quality"]
    readings = sorted(
        fleet_readings(registry, aq, b - 5 * MINUTE, b + 46 * MINUTE, None)
        + fleet_readings(registry, others, b - 5 * MINUTE, b + 20 * MINUTE, None),
        key=lambda r: (r.ts, r.sensor_id),
    )
    last_ts = {r.sensor_id: r.ts for r in readings if r.sensor_id in HANDFUL}
    handful = [r for r in readings if r.sensor_id in HANDFUL and r.ts > last_ts[r.sensor_id] - HANDFUL_MIN * MINUTE]
    late = [r for r in readings if r.sensor_id in LATE and b - 4 * MINUTE <= r.ts < b - MINUTE]
    held = {(r.sensor_id, r.ts) for r in handful + late}
    first = [r for r in readings if r.ts < b + 10 * MINUTE and (r.sensor_id, r.ts) not in held]
    again = random.Random(1).sample(first, 200)
    redelivered = [msgspec.structs.replace(r, received=r.received + 90_000) for r in again]
    second = [r for r in readings if r.ts >= b + 10 * MINUTE and (r.sensor_id, r.ts) not in held] + late + redelivered

    settings = PipelineSettings(home=tmp / "home", poll_interval_s=0.1)
    influx = InfluxSettings.from_env(stack.env(), db=FOLLOW_DB)
    bootstrap(influx)
    write_segment(settings.spool_root, 1, first)
    follow_once(settings, registry, influx, clock=lambda: now_s)
    write_segment(settings.spool_root, 2, second)
    env = {**os.environ, **stack.env(home=settings.home), "SMARTCITY_INFLUX_DB": FOLLOW_DB}
    env["SMARTCITY_REGISTRY"] = str(registry_dir)
    follow_until_checkpoint_then_kill_9(env, 2)
    write_segment(settings.spool_root, 3, handful)
    [last_cycle] = follow_once(settings, registry, influx, clock=lambda: now_s)
    return Followed(registry, settings, b, readings, handful, last_cycle)


def test_follow_cycles_at_10x_the_fleet_with_a_kill_9_write_exactly_the_points_of_a_bounded_run(
    stack: StackHandle, followed: Followed
) -> None:
    registry, b = followed.registry, followed.hour_b
    assert len(registry.sensors) == 6_100
    batch_influx = InfluxSettings.from_env(stack.env(), db=BATCH_DB)
    bootstrap(batch_influx)
    home = followed.settings.home
    run_plan(Plan.bounded(PIPELINES, b - HOUR, b + HOUR), PipelineSettings(home=home), registry, [], batch_influx)
    measurements = [
        "aqi_1h",
        "sensor_health_1h",
        "anomalies",
        *(f"{kind}_{w}" for kind in registry.kinds for w in ("1m", "1h")),
    ]
    followed_rows = stored(stack, FOLLOW_DB, measurements, b + HOUR)
    bounded = stored(stack, BATCH_DB, measurements, b + HOUR)
    # Every sensor has health in both hours, and hour B an AQI: the fleet is all there.
    assert sum(1 for k in bounded if k[0] == "sensor_health_1h") == 2 * len(registry.sensors)
    assert any(k[0] == "aqi_1h" and k[2] == b for k in bounded)
    assert followed_rows.keys() == bounded.keys()
    assert {k: v for k, v in followed_rows.items() if bounded[k] != v} == {}


def test_a_follow_cycle_over_n_new_readings_writes_points_for_them_not_for_the_fleet(
    stack: StackHandle, followed: Followed, registry: Registry, tmp_path: Path
) -> None:
    """Cycle 3 re-aggregates hour B of 6,100 sensors but writes only the rows its N readings are in:
    at most MAX_POINTS_PER_READING each, and exactly as many as the same N readings write when
    followed over the pilot fleet's history of the same hours (`registry`, 610 sensors)."""
    n, last = len(followed.handful), followed.last_cycle
    assert 30 <= n <= 60 and {r.sensor_id for r in followed.handful} == HANDFUL
    assert last.plan.start_ms == followed.hour_b and not last.plan.aqi_lookback
    assert last.readings > 100 * n  # it did read the fleet's hour (an O(fleet) cycle would write it all)
    print(f"10x: {n} new readings, {last.points_written} points ({last.points_written / n:.2f} per reading)")
    assert 0 < last.points_written <= MAX_POINTS_PER_READING * n

    # The same N readings over the pilot fleet's history (its sensors' readings are the same in both).
    settings = PipelineSettings(home=tmp_path / "home", poll_interval_s=0.1)
    influx = InfluxSettings.from_env(stack.env(), db=PILOT_DB)
    bootstrap(influx)
    held = {(r.sensor_id, r.ts) for r in followed.handful}
    history = [r for r in followed.readings if r.sensor_id in registry.sensors and (r.sensor_id, r.ts) not in held]
    now_s = time.time()
    write_segment(settings.spool_root, 1, history)
    follow_once(settings, registry, influx, clock=lambda: now_s)
    write_segment(settings.spool_root, 2, followed.handful)
    [pilot] = follow_once(settings, registry, influx, clock=lambda: now_s)
    print(f"1x: {pilot.points_written} points over {pilot.readings} readings read (10x: {last.readings})")
    assert pilot.readings * 5 < last.readings
    assert last.points_written == pilot.points_written
