"""This host's clock off, as after a power cut without time sync: every vendor's readings look skewed.

Simulated from the other side (the fleet's clocks 2 h 10 min ahead, which ingest cannot tell from its own
clock 2 h 10 min behind): every reading is still rejected as `ts_in_future`, as the contract says, and
ingest's log says once that independent vendors agreeing points at this host's clock.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from tests.ingest.helpers import IngestProcess, ingest_env, messages, publish_all, wait_until
from tests.servers import StackHandle

pytestmark = pytest.mark.system

SKEW_MS = 2 * 3_600_000 + 10 * 60_000


def test_every_vendor_hours_ahead_points_the_operator_at_this_hosts_clock(
    private_stack: StackHandle, tmp_path: Path
) -> None:
    now_ms = int(time.time() * 1000)
    ahead = []
    for i, m in enumerate(messages(6_000, slot=0)):
        document = json.loads(m.payload)
        document["ts"] = now_ms + SKEW_MS + i  # the fleet's clocks, as this host's sees them
        ahead.append(dataclasses.replace(m, payload=json.dumps(document).encode()))
    env = ingest_env(private_stack, tmp_path / "home", client_id="sys-clock")
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        publish_all(private_stack, ahead, rate_per_s=400)  # 15 s: the check weighs 10 s at a time
        wait_until(lambda: "this host's clock running behind" in ingest.log.read_text(), 20, "the clock warning")
        assert ingest.terminate() == 0
    log = ingest.log.read_text()
    [line] = [line for line in log.splitlines() if "this host's clock" in line]
    assert " ERROR ingest.consumer: every reading of 7 vendors " in line, line
    assert "is rejected as ts_in_future, about 2.2 h ahead of this host's clock" in line, line
    assert "check its time sync" in line
