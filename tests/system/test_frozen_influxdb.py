"""InfluxDB that stops answering (SIGSTOP: the kernel accepts connections, nothing replies) under load.

Readings keep being accepted and spooled. SIGTERM ends ingest within
`shutdown_timeout_s` although the raw writer's and the metrics' requests hang:
closing a writer fails its request at once (before, each waited for its
`timeout_s`, 10 s, and the parent killed its writer child). After InfluxDB
thaws, the next run writes every reading.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sensors.spool import READINGS, closed_segments, read_readings
from tests.ingest.helpers import IngestProcess, Publisher, ingest_env, messages, raw_points, wait_for_points
from tests.servers import StackHandle

pytestmark = pytest.mark.system

SHUTDOWN_TIMEOUT_S = 4.0


def test_a_frozen_influxdb_neither_stops_acceptance_nor_shutdown(private_stack: StackHandle, tmp_path: Path) -> None:
    stack = private_stack
    items = messages(6000, slot=46)
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="sys-frozen-db", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    pid = stack.influxdb.running_pid()
    assert pid is not None
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish(items[:1000], rate_per_s=2000)
        os.kill(pid, signal.SIGSTOP)
        try:
            publisher.publish(items[1000:], rate_per_s=2000)  # acknowledged: each one is spooled
            publisher.close()
            time.sleep(2)
            stopping = time.monotonic()
            code = ingest.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 30)
            elapsed = time.monotonic() - stopping
        finally:
            os.kill(pid, signal.SIGCONT)
    spooled = {(r.sensor_id, r.ts) for s in closed_segments(home / "spool", READINGS) for r in read_readings(s.path)}
    print(f"stopped in {elapsed:.1f} s with InfluxDB frozen, {len(spooled)} readings spooled")  # shown with -s
    assert code == 0
    assert elapsed <= SHUTDOWN_TIMEOUT_S, f"took {elapsed:.1f} s to stop with InfluxDB frozen"
    assert spooled == {(m.sensor_id, m.ts) for m in items}
    assert "did not stop in time" not in ingest.log.read_text()  # the writer child stopped on its own

    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        ingest.wait_log("subscribed to")
        wait_for_points(stack, items, timeout_s=60)
        assert ingest.terminate() == 0
    stored = raw_points(stack, items)
    assert all(stored[(m.sensor_id, m.ts)] == m.values for m in items)
