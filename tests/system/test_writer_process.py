"""The process model of `smartcity ingest` (role all): a consumer process and its raw writer child.

kill -9 of the parent (then a restart, as a service manager does) and kill -9
of the writer child (the parent restarts it) under load, each audited: every
acknowledged reading stored, nothing lost, no child outliving its parent. A bug
that ends the child's writer thread ends the child, so that the parent restarts it;
a hung child shows as lag in the parent's metrics, which the ingest-lag alert watches.
And SIGTERM: both drain, within `shutdown_timeout_s`, with everything the
spool holds written to InfluxDB. The fault points come from the session's seed.
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path

import pytest

from sensors.spool import READINGS, closed_segments, read_readings
from tests.ingest.helpers import IngestProcess, Publisher, ingest_env, messages, publish_all, wait_for_points
from tests.servers import StackHandle
from tests.system.harness import (
    Faults,
    Load,
    balanced_audit,
    corrupt_lines,
    end_fault,
    influxql,
    seeded,
    until,
    wait_stored,
)
from tests.system.report import Report, Row

pytestmark = pytest.mark.system

KILLS = 5
SHUTDOWN_TIMEOUT_S = 4.0
# A child whose parent was killed drains what the spool holds within its shutdown_timeout_s, then exits.
ORPHAN_GRACE_S = SHUTDOWN_TIMEOUT_S + 3


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def gone(pid: int) -> bool:
    return not alive(pid)


def replaced(parent: int, old: int) -> bool:
    """True once `parent` has a writer child again, and not the `old` one."""
    return children(parent) not in ([], [old])


def writer_child(proc: IngestProcess, timeout_s: float = 20) -> int:
    """The pid of the raw writer child of a role all process, once it writes its stream."""
    until(lambda: len(children(proc.proc.pid)) == 1, timeout_s, "the raw writer child")
    return children(proc.proc.pid)[0]


def finish(load: Load, stack: StackHandle) -> None:
    load.stop()
    load.finish()
    wait_stored(stack, load, load.stored_keys_due(time.monotonic()), 90)


def test_kill_9_of_the_parent_leaves_no_orphan_and_loses_nothing(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    rng = seeded(seed, "kill-parent")
    started = time.monotonic()
    home = tmp_path / "home"
    env = ingest_env(private_stack, home, client_id="sys-parent", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    logs = iter(tmp_path / f"ingest-{n}.log" for n in range(100))
    load = Load(private_stack, home / "manifests" / "load.json", rate=600, duration_s=40, seed=seed)
    faults = Faults()
    proc = IngestProcess(env, next(logs))
    try:
        proc.wait_log("subscribed to")
        load.start()
        for _ in range(KILLS):
            child = writer_child(proc)
            time.sleep(rng.uniform(0.2, 2.0))
            fault = faults.begin()
            proc.kill()
            until(partial(gone, child), ORPHAN_GRACE_S, f"the writer child {child} to exit after its parent")
            proc = IngestProcess(env, next(logs))
            proc.wait_log("subscribed to")
            end_fault(fault, load, private_stack)
        finish(load, private_stack)
        child = writer_child(proc)
        assert proc.terminate() == 0
        assert not alive(child)
    finally:
        proc.__exit__()
    result = balanced_audit(private_stack, home, [load.manifest_path], load.registry)
    assert result.total().missing == 0
    assert corrupt_lines(home / "spool") == []
    reliability.add(
        Row("kill -9 of `ingest` (role all), its writer child then stops", KILLS, load.published, faults.in_flight,
            result.total().missing, None, faults.recovery, seconds=time.monotonic() - started)
    )  # fmt: skip


def test_kill_9_of_the_writer_child_is_restarted_and_loses_nothing(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    rng = seeded(seed, "kill-writer-child")
    started = time.monotonic()
    home = tmp_path / "home"
    env = ingest_env(private_stack, home, client_id="sys-child")
    load = Load(private_stack, home / "manifests" / "load.json", rate=600, duration_s=40, seed=seed)
    faults = Faults()
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        load.start()
        for _ in range(KILLS):
            child = writer_child(ingest)
            time.sleep(rng.uniform(0.2, 2.0))
            fault = faults.begin()
            os.kill(child, signal.SIGKILL)
            ingest.wait_log(f"raw writer process {child} exited (killed by SIGKILL); restarting it")
            until(partial(replaced, ingest.proc.pid, child), 40, "a new raw writer child")
            end_fault(fault, load, private_stack)
        finish(load, private_stack)
        assert ingest.terminate() == 0
    result = balanced_audit(private_stack, home, [load.manifest_path], load.registry)
    assert result.total().missing == 0
    assert corrupt_lines(home / "spool") == []
    reliability.add(
        Row("kill -9 of the raw writer child of `ingest` (restarted by it)", KILLS, load.published, faults.in_flight,
            result.total().missing, None, faults.recovery, seconds=time.monotonic() - started)
    )  # fmt: skip


def test_sigterm_drains_both_within_shutdown_timeout(stack: StackHandle, tmp_path: Path) -> None:
    """SIGTERM under load: exit 0 within shutdown_timeout_s, the child gone, and every reading the spool
    holds (so every one acknowledged) already in InfluxDB."""
    items = messages(20000, slot=44)
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="sys-sigterm", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    publisher = Publisher(stack)
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        child = writer_child(ingest)
        publisher.publish(items[:15000], rate_per_s=5000)
        stopping = time.monotonic()
        assert ingest.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 5) == 0
        elapsed = time.monotonic() - stopping
    publisher.close()
    assert elapsed <= SHUTDOWN_TIMEOUT_S, f"took {elapsed:.1f} s to stop"
    assert not alive(child)
    assert not list((home / "spool" / "sys-sigterm").glob("*.open"))
    spooled = {(r.sensor_id, r.ts) for s in closed_segments(home / "spool", READINGS) for r in read_readings(s.path)}
    assert len(spooled) > 5000
    wait_for_points(stack, [m for m in items if (m.sensor_id, m.ts) in spooled], timeout_s=1)


# A bug in the raw writer, injected into every Python process of the test's ingest (sitecustomize on
# PYTHONPATH): the first time any process turns records into lines, it raises. Only the writer child does.
WRITER_BUG = """
import os, pathlib
from ingest import rawwriter

encode = rawwriter.RawLines.record_lines

def record_lines(self, records):
    marker = pathlib.Path(os.environ["SMARTCITY_TEST_WRITER_BUG"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        raise RuntimeError("an injected bug in the raw writer")
    return encode(self, records)

rawwriter.RawLines.record_lines = record_lines
"""


def test_a_bug_that_ends_the_writer_thread_ends_the_child_which_is_restarted(
    stack: StackHandle, tmp_path: Path
) -> None:
    """A child whose writer thread died used to idle until ingest restarted, writing nothing while the spool
    grew. It now exits with an error, and the parent restarts it: the readings arrive a moment late."""
    items = messages(300, slot=63)
    bug = tmp_path / "injected"
    bug.mkdir()
    (bug / "sitecustomize.py").write_text(WRITER_BUG)
    env = ingest_env(stack, tmp_path / "home", client_id="sys-writer-bug")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bug), env.get("PYTHONPATH")]))
    env["SMARTCITY_TEST_WRITER_BUG"] = str(tmp_path / "bug-fired")
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        child = writer_child(ingest)
        publish_all(stack, items)
        ingest.wait_log("RuntimeError: an injected bug in the raw writer")
        ingest.wait_log(f"raw writer process {child} exited (exit code 1); restarting it")
        wait_for_points(stack, items, timeout_s=30)
        assert ingest.terminate() == 0
    assert (tmp_path / "bug-fired").read_text() == str(child)
    assert "smartcity ingest: error: the raw writer failed" in ingest.log.read_text()


def test_a_hung_writer_child_shows_as_lag_in_the_parents_metrics_and_loses_nothing(
    stack: StackHandle, tmp_path: Path
) -> None:
    """A child that hangs (SIGSTOP: alive, writing nothing) reports nothing itself. The parent measures the
    lag from the position the child saved, so the ingest-lag alert's field still grows; continued, the
    child writes everything."""
    items = messages(2000, slot=64)
    env = ingest_env(stack, tmp_path / "home", client_id="sys-hung-child")

    def lag_s() -> float:
        # The field and filter of the ingest-lag alert (dashboards/alerts.py), over the last 10 s.
        query = (
            'SELECT max("spool_lag_s") FROM "raw"."ingest" WHERE "instance" = \'sys-hung-child\' AND time > now() - 10s'
        )
        found = influxql(stack, query)
        return float(found[0]["values"][0][1] or 0) if found else 0.0

    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        child = writer_child(ingest)
        os.kill(child, signal.SIGSTOP)
        try:
            publish_all(stack, items[:1000], rate_per_s=500)
            until(lambda: lag_s() >= 4, 30, "the parent to report 4 s of writer lag")
        finally:
            os.kill(child, signal.SIGCONT)
        publish_all(stack, items[1000:])
        wait_for_points(stack, items, timeout_s=30)
        until(lambda: lag_s() < 2, 30, "the lag to fall once the child runs again")
        assert ingest.terminate() == 0
    assert children(ingest.proc.pid) == []
