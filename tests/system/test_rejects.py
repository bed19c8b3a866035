"""Rejections over a vendor's budget and rewrites of history, through the whole system, and the audit.

The simulator's fleet with many bad messages (out of range) and rewrites of past readings (`conflict`)
goes to an ingest whose reject store keeps at most 5 rejections a second per vendor. The rest are
answered on the reject topic but not kept: the audit must still balance, explaining each missing
rejection by ingest's `rejects_not_stored` counter (not by the simulator's manifest), and InfluxDB must
hold the first value of every rewritten reading.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deploy.audit import audit, load_manifest
from sensors.contract import Accepted, Contract
from sensors.faults import Fault
from sensors.simulator import GOOD
from storage.settings import InfluxSettings
from tests.ingest.helpers import IngestProcess, influx_query, ingest_env
from tests.servers import StackHandle
from tests.system.harness import Load, balanced_audit, wait_stored
from tests.system.report import Report, Row

pytestmark = pytest.mark.system

RATE = 400
DURATION_S = 5
FAULTS = {Fault.OUT_OF_RANGE: 0.2, Fault.CONFLICT: 0.05, Fault.DUPLICATE: 0.02}


def test_rejections_over_budget_and_conflicts_keep_the_audit_balanced(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    started = time.monotonic()
    home = tmp_path / "home"
    load = Load(private_stack, home / "manifests" / "rejects.json", rate=RATE, duration_s=DURATION_S, seed=seed,
                faults=FAULTS)  # fmt: skip
    env = ingest_env(private_stack, home, client_id="sys-rejects", reject_store_per_s=5)
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        load.start()
        load.finish()
        wait_stored(private_stack, load, load.stored_keys_due(time.monotonic()), 60)
        time.sleep(1.5)  # the last rejections' metrics report
        assert ingest.terminate() == 0

    result = balanced_audit(private_stack, home, [load.manifest_path], load.registry)
    total = result.total()
    assert total.rejects_not_stored > 0, "the budget kept only part of the rejections"
    assert total.rejects_stored - total.reject_duplicates + total.rejects_not_stored == total.rejects_expected
    assert result.stored_by_code["out_of_range"] > 0
    # The counter is the evidence: without ingest's figures the same store does not balance.
    influx_query(private_stack, 'DROP MEASUREMENT "ingest_vendors"')
    without = audit([load_manifest(load.manifest_path)], InfluxSettings.from_env(private_stack.env(home=home)),
                    load.registry, home / "spool")  # fmt: skip
    assert not without.balanced and without.total().rejects_missing == total.rejects_not_stored

    # Every rewritten reading kept its first values in InfluxDB.
    contract = Contract(load.registry)
    messages = list(load.simulation.messages())
    first = {(m.sensor_id, m.ts): m for m in messages if m.category == GOOD}
    rewrites = [m for m in messages if m.category == "conflict"]
    assert len(rewrites) > 20
    for rewrite in rewrites[:20]:
        original = contract.decode(first[(rewrite.sensor_id, rewrite.ts)].topic,
                                   first[(rewrite.sensor_id, rewrite.ts)].payload, rewrite.ts)  # fmt: skip
        assert isinstance(original, Accepted)
        reading = original.readings[0]
        stored = influx_query(
            private_stack,
            f'SELECT * FROM "raw"."{reading.kind}" WHERE sensor_id = \'{reading.sensor_id}\' AND time = {reading.ts}ms',
        )["results"][0]["series"][0]
        row = dict(zip(stored["columns"], stored["values"][0], strict=True))
        assert {name: float(row[name]) for name in reading.values} == reading.values, rewrite.sensor_id

    reliability.add(
        Row(
            f"vendor floods bad messages over its reject budget ({total.rejects_not_stored} answered, not kept) "
            "and rewrites past readings (refused as conflict)",
            len(rewrites),
            load.published,
            None,
            total.missing,
            None,
            seconds=time.monotonic() - started,
        )
    )
