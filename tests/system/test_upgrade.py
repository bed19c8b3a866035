"""An upgrade in place: the raw writer writes a spool whose older segments hold reading records in the field
order before the sensor context came first (`sensors.reading`), and newer ones in today's order."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from sensors.registry import default_registry
from tests.ingest.helpers import IngestProcess, influx_query, ingest_env, messages, wait_for_points
from tests.pipelines.spooldata import line_before, write_segment
from tests.servers import StackHandle

pytestmark = pytest.mark.system


def test_segments_of_both_record_orders_reach_influxdb_with_their_tags(stack: StackHandle, tmp_path: Path) -> None:
    registry = default_registry()
    fleet = len(registry.sensors)
    items = messages(3 * fleet, slot=62)  # three readings of every sensor, in rounds
    readings = [registry.sensors[m.sensor_id].reading(m.ts, m.values, i, m.ts + 500) for i, m in enumerate(items)]
    # A registry change within the old records: in the second round every sensor has moved to another
    # site. An old record's leading bytes (sensor_id and kind) are then the same for two contexts.
    moved = slice(fleet, 2 * fleet)
    readings[moved] = [msgspec.structs.replace(r, site="moved-site", district="moved") for r in readings[moved]]
    home = tmp_path / "home"
    write_segment(home / "spool", 1, readings[: 2 * fleet], stream="upgraded", encode=line_before)
    write_segment(home / "spool", 2, readings[2 * fleet :], stream="upgraded")
    old_segment = (home / "spool" / "upgraded" / "readings-000000000001.seg").read_bytes()
    assert len(re.findall(rb'"kind":"[a-z_]+","ts":', old_segment)) == 2 * fleet  # the order before

    with IngestProcess(ingest_env(stack, home, client_id="writer-upgraded", role="write"), tmp_path / "w.log") as w:
        wait_for_points(stack, items, timeout_s=30)
        assert w.terminate() == 0
    tags = {"sensor_id", "vendor", "super_cluster", "city", "district", "site"}
    stored = {}
    for kind in {r.kind for r in readings}:
        result = influx_query(stack, f'SELECT * FROM "raw"."{kind}" WHERE time >= {items[0].ts}ms')
        for series in result["results"][0]["series"]:
            for row in series["values"]:
                record = dict(zip(series["columns"], row, strict=True))
                stored[(record["sensor_id"], record["time"])] = {k: record[k] for k in tags}
    expected = {(r.sensor_id, r.ts): {k: getattr(r, k) for k in tags} for r in readings}
    assert {k: stored.get(k) for k in expected} == expected
