"""Crashes and outages under load, with real processes, repeated at random points: nothing accepted is lost.

Each scenario runs on its own Mosquitto + InfluxDB (`private_stack`), replays
the simulator's fleet through the broker with each vendor's account while
faults are injected, then checks with `deploy.audit` that every accepted
reading is stored exactly once per (sensor, ts) and every rejected message is
kept with its code. The fault points come from the session's seed
(`SMARTCITY_RELIABILITY_SEED`, shown in pytest's header).

Single, hand-placed faults are in tests/ingest/test_crash_it.py; this is their
repeated, randomized and audited version, with the figures of docs/reliability.md.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.spooltail import OFFSET_FILE
from sensors.checkpoint import Checkpoint
from sensors.publisher import iso
from sensors.simulator import HOUR_MS
from sensors.spool import closed_segments
from tests.ingest.helpers import IngestProcess, Publisher, ingest_env, messages, wait_for_points
from tests.servers import StackHandle
from tests.system.harness import (
    Faults,
    Load,
    SmartcityProcess,
    WriteCounter,
    balanced_audit,
    corrupt_lines,
    differences,
    dump,
    end_fault,
    influxql,
    seeded,
    tmpfs,
    until,
    wait_stored,
)
from tests.system.report import Report, Row

pytestmark = pytest.mark.system

KILLS = 10
RESTARTS = 3
OUTAGE_S = 60
DISK_MIB = 8
SMARTCITY = [sys.executable, "-m", "deploy.cli"]


def finish(load: Load, stack: StackHandle, timeout_s: float = 90) -> None:
    """Stop publishing and wait until InfluxDB holds every reading the broker acknowledged."""
    load.stop()
    load.finish()
    wait_stored(stack, load, load.stored_keys_due(time.monotonic()), timeout_s)


def test_kill_9_of_ingest_at_random_points_under_load(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    rng = seeded(seed, "kill-ingest")
    started = time.monotonic()
    home = tmp_path / "home"
    env = ingest_env(private_stack, home, client_id="sys-ingest")
    logs = iter(tmp_path / f"ingest-{n}.log" for n in range(100))
    load = Load(private_stack, home / "manifests" / "load.json", rate=600, duration_s=45, seed=seed)
    writes = WriteCounter(private_stack)
    faults = Faults()
    proc = IngestProcess(env, next(logs))
    try:
        proc.wait_log("subscribed to")
        load.start()
        kills = 0
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 2.0))
            fault = faults.begin()
            proc.kill()
            kills += 1
            if rng.random() < 0.3:  # and the next one while it recovers its spool and resumes its session
                proc = IngestProcess(env, next(logs))
                time.sleep(rng.uniform(0.05, 0.8))
                proc.kill()
                kills += 1
            proc = IngestProcess(env, next(logs))
            proc.wait_log("subscribed to")
            end_fault(fault, load, private_stack)
        finish(load, private_stack)
        assert proc.terminate() == 0
    finally:
        proc.__exit__()
    result = balanced_audit(private_stack, home, [load.manifest_path], load.registry)
    assert corrupt_lines(home / "spool") == []
    reliability.add(
        Row(
            "kill -9 of `ingest` (role all)",
            kills,
            load.published,
            faults.in_flight,
            result.total().missing,
            writes.duplicates(),
            faults.recovery,
            seconds=time.monotonic() - started,
        )
    )


def test_kill_9_of_the_raw_writer_at_random_points_under_load(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    rng = seeded(seed, "kill-writer")
    started = time.monotonic()
    home = tmp_path / "home"
    consume_env = ingest_env(private_stack, home, client_id="sys-consume", role="consume")
    write_env = ingest_env(private_stack, home, client_id="sys-writer", role="write")
    logs = iter(tmp_path / f"writer-{n}.log" for n in range(100))
    load = Load(private_stack, home / "manifests" / "load.json", rate=600, duration_s=45, seed=seed)
    writes = WriteCounter(private_stack)
    faults = Faults()
    with IngestProcess(consume_env, tmp_path / "consume.log") as consumer:
        writer = IngestProcess(write_env, next(logs))
        try:
            consumer.wait_log("subscribed to")
            writer.wait_log("writing stream sys-consume")
            load.start()
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.05, 2.0))
                fault = faults.begin()
                writer.kill()
                writer = IngestProcess(write_env, next(logs))
                writer.wait_log("writing stream sys-consume")
                end_fault(fault, load, private_stack)
            finish(load, private_stack)
            assert writer.terminate() == 0
        finally:
            writer.__exit__()
        assert consumer.terminate() == 0
    result = balanced_audit(private_stack, home, [load.manifest_path], load.registry)
    assert corrupt_lines(home / "spool") == []
    reliability.add(
        Row(
            "kill -9 of the raw writer (`ingest --role write`)",
            KILLS,
            load.published,
            faults.in_flight,
            result.total().missing,
            writes.duplicates(),
            faults.recovery,
            seconds=time.monotonic() - started,
        )
    )


def server_faults(
    stack: StackHandle,
    tmp_path: Path,
    seed: int,
    inject: Callable[[Load, Faults, random.Random, WriteCounter], None],
    *,
    rate: float = 600,
    duration_s: float = 30,
) -> tuple[Load, Faults, WriteCounter, int, str]:
    """One ingest process under load while `inject` makes faults of the servers; everything is then stored.
    Returns the load, the faults, InfluxDB's write counter, the readings lost and ingest's log."""
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="sys-servers")
    load = Load(stack, home / "manifests" / "load.json", rate=rate, duration_s=duration_s, seed=seed)
    writes = WriteCounter(stack)
    faults = Faults()
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        load.start()
        inject(load, faults, seeded(seed, inject.__name__), writes)
        finish(load, stack)
        assert ingest.terminate() == 0
    result = balanced_audit(stack, home, [load.manifest_path], load.registry)
    return load, faults, writes, result.total().missing, ingest.log.read_text()


def test_broker_restarted_under_load(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    started = time.monotonic()
    broker = private_stack.mosquitto

    def restart_broker(load: Load, faults: Faults, rng: random.Random, writes: WriteCounter) -> None:
        for _ in range(RESTARTS):
            time.sleep(rng.uniform(0.5, 3.0))
            fault = faults.begin()
            broker.stop()  # SIGTERM: Mosquitto saves its sessions and queued messages
            time.sleep(rng.uniform(0.0, 2.0))
            broker.start(detach=True)
            end_fault(fault, load, private_stack)

    load, faults, writes, lost, log = server_faults(private_stack, tmp_path, seed, restart_broker)
    assert "had no session" not in log  # Mosquitto kept ingest's session each time
    reliability.add(
        Row("Mosquitto restarted (SIGTERM, down 0-2 s)", RESTARTS, load.published, faults.in_flight, lost,
            writes.duplicates(), faults.recovery, seconds=time.monotonic() - started)
    )  # fmt: skip


def test_influxdb_restarted_under_load(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    started = time.monotonic()
    influx = private_stack.influxdb

    def restart_influxdb(load: Load, faults: Faults, rng: random.Random, writes: WriteCounter) -> None:
        for n in range(RESTARTS):
            time.sleep(rng.uniform(0.5, 3.0))
            fault = faults.begin()
            writes.restarting()
            influx.kill() if n % 2 == 0 else influx.stop()  # a crash (its WAL is replayed), then a clean stop
            time.sleep(rng.uniform(0.0, 2.0))
            influx.start(detach=True)
            end_fault(fault, load, private_stack)

    load, faults, writes, lost, _ = server_faults(private_stack, tmp_path, seed, restart_influxdb)
    reliability.add(
        Row("InfluxDB restarted (kill -9 or SIGTERM, down 0-2 s)", RESTARTS, load.published, faults.in_flight, lost,
            writes.duplicates(), faults.recovery, seconds=time.monotonic() - started)
    )  # fmt: skip


def test_influxdb_down_for_60_s_under_load(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    started = time.monotonic()
    influx = private_stack.influxdb

    def stop_influxdb(load: Load, faults: Faults, rng: random.Random, writes: WriteCounter) -> None:
        time.sleep(rng.uniform(0.5, 3.0))
        fault = faults.begin()
        writes.restarting()
        influx.stop()
        time.sleep(OUTAGE_S)
        influx.start(detach=True)
        end_fault(fault, load, private_stack, timeout_s=120)
        # The outage shows in ingest's self-metrics, written once InfluxDB is back: what the lag alert watches.
        until(lambda: self_metrics()[0] >= OUTAGE_S / 3, 30, "the spool lag of the outage in ingest's metrics")
        assert self_metrics()[1] >= 1  # write retries

    def self_metrics() -> tuple[float, float]:
        """(max spool_lag_s, sum write_retries) of the scenario's ingest, as InfluxDB holds them."""
        found = influxql(
            private_stack,
            'SELECT max("spool_lag_s"), sum("write_retries") FROM "raw"."ingest" WHERE "instance" = \'sys-servers\'',
        )
        _, lag, retries = found[0]["values"][0] if found else (0, 0, 0)
        return float(lag or 0), float(retries or 0)

    load, faults, writes, lost, log = server_faults(
        private_stack, tmp_path, seed, stop_influxdb, rate=300, duration_s=90
    )
    assert "failed" in log  # the writer saw the outage and retried
    reliability.add(
        Row(f"InfluxDB down {OUTAGE_S} s", 1, load.published, faults.in_flight, lost, writes.duplicates(),
            faults.recovery, seconds=time.monotonic() - started)
    )  # fmt: skip


def test_kill_9_of_the_follow_pipeline_at_random_points(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    """Its rollups, AQI, health and anomaly points end up exactly those of one clean bounded run."""
    rng = seeded(seed, "kill-follow")
    started = time.monotonic()
    home = tmp_path / "home"
    env = ingest_env(private_stack, home, client_id="sys-follow", segment_max_age_s=1)
    env["SMARTCITY_PIPELINE_POLL_INTERVAL_S"] = "0.5"
    checkpoint = home / "pipelines" / "checkpoint.json"
    logs = iter(tmp_path / f"follow-{n}.log" for n in range(100))
    load = Load(private_stack, home / "manifests" / "load.json", rate=300, duration_s=90, seed=seed)
    faults = Faults()

    def closed() -> dict[str, int]:
        return {s.stream: s.seq for s in closed_segments(home / "spool")}

    def wait_caught_up(due: dict[str, int], timeout_s: float) -> None:
        """Until the checkpoint says the pipelines processed the segments `due` (stream -> closed seq)."""

        def caught_up() -> bool:
            done = Checkpoint.load(checkpoint).streams
            return all(done.get(stream, -1) >= seq for stream, seq in due.items())

        until(caught_up, timeout_s, "the follow pipeline to process the closed segments")

    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        load.start()
        follow = SmartcityProcess(env, next(logs), "pipeline", "run", "--follow")
        try:
            until(lambda: checkpoint.exists(), 60, "the first follow cycle")
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.1, 4.0))
                fault = faults.begin()
                follow.kill()
                follow = SmartcityProcess(env, next(logs), "pipeline", "run", "--follow")
                follow.wait_log("following")
                fault.ended = time.monotonic()
                fault.in_flight = load.published_between(fault.started, fault.ended)
                wait_caught_up(closed(), 90)
                fault.recovery_s = time.monotonic() - fault.ended
            finish(load, private_stack)
            assert ingest.terminate() == 0  # closes its last segments
            wait_caught_up(closed(), 90)
            assert follow.terminate() == 0
        finally:
            follow.__exit__()
    result = balanced_audit(private_stack, home, [load.manifest_path], load.registry)
    # The hours the published readings fall in (the load stopped before the end of its plan).
    first, last = load.start_ms, max(a.ts for a in load.acks)
    start, end = first - first % HOUR_MS, last - last % HOUR_MS + HOUR_MS
    clean = subprocess.run(
        [*SMARTCITY, "pipeline", "run", "--no-cache", "--from", iso(start), "--to", iso(end)],
        env={**env, "SMARTCITY_INFLUX_DB": "clean"},
        capture_output=True,
        text=True,
    )
    assert clean.returncode == 0, clean.stderr
    followed = dump(private_stack, rp="rollup", between=(start, end))
    once = dump(private_stack, "clean", rp="rollup", between=(start, end))
    # Anomalies included: a spike a follow cycle flagged on part of an hour is cleared when the hour
    # is computed again (pipelines.run.clear_anomalies).
    assert followed, "the follow pipeline wrote no rollups"
    # The differences alone: pytest's own diff of two dumps is thousands of lines.
    assert not (diff := differences(followed, once)), diff
    reliability.add(
        Row(
            "kill -9 of `pipeline run --follow`",
            KILLS,
            load.published,
            faults.in_flight,
            result.total().missing,
            None,
            faults.recovery,
            seconds=time.monotonic() - started,
        )
    )


def test_the_raw_writer_outlives_a_failed_offset_save(stack: StackHandle, tmp_path: Path) -> None:
    """What a full disk does to the writer's offset file, made certain: a directory where the file goes, once
    the writer has read it. The writer must retry, not stop writing until ingest is restarted."""
    items = messages(2000, slot=40)
    home = tmp_path / "home"
    blocker = home / "spool" / "sys-offset" / OFFSET_FILE
    with IngestProcess(ingest_env(stack, home, client_id="sys-offset"), tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        ingest.wait_log("writing stream sys-offset to InfluxDB")  # the writer has read its offset
        blocker.mkdir()
        publisher = Publisher(stack)
        publisher.publish(items[:1000])
        ingest.wait_log("Is a directory")
        blocker.rmdir()
        publisher.publish(items[1000:])
        publisher.close()
        wait_for_points(stack, items, timeout_s=30)
        assert ingest.terminate() == 0


def fill(path: Path, leave_bytes: int = 0) -> None:
    """Another program fills the disk: `path` grows until only `leave_bytes` are free (none: until ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while (room := shutil.disk_usage(path.parent).free - leave_bytes) > 0 or not leave_bytes:
            os.write(fd, b"\0" * min(max(room, 4096), 2**20))
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)


def test_influxdb_disk_full_under_load(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    """InfluxDB's WAL disk fills: its writes fail with HTTP 500 and, once room is made, keep failing until
    InfluxDB restarts (1.6.7 keeps its WAL writer's error; the points it answered 500 for show in queries
    until then and are gone after). Ingest goes on acknowledging into its spool, its log names the cause and
    the cure, and after the restart every acknowledged reading is stored."""
    started = time.monotonic()
    influx = private_stack.influxdb
    wal, kept = influx.data_dir / "wal", tmp_path / "wal-before"
    influx.stop()
    if wal.exists():  # InfluxDB makes it with the first write
        shutil.move(wal, kept)
    with tmpfs(wal, DISK_MIB * 4) as mounted:
        # Loud, never skipped: a suite that quietly leaves a fault out reads as a pass (CI runs as root).
        assert mounted, "could not mount a tmpfs for InfluxDB's WAL (needs root and mount(8))"
        if kept.exists():
            shutil.copytree(kept, wal, dirs_exist_ok=True)
        influx.start(detach=True)
        log = tmp_path / "ingest.log"

        def fill_the_wal_disk(load: Load, faults: Faults, rng: random.Random, writes: WriteCounter) -> None:
            time.sleep(rng.uniform(0.5, 3.0))
            fault = faults.begin()
            fill(wal / "other.log")
            until(lambda: "InfluxDB's disk is full" in log.read_text(errors="replace"), 30, "the disk-full hint")
            time.sleep(rng.uniform(1.0, 3.0))
            (wal / "other.log").unlink()  # an operator makes room, then (as the hint says) restarts InfluxDB
            time.sleep(rng.uniform(1.0, 3.0))
            writes.restarting()
            influx.stop()
            influx.start(detach=True)
            end_fault(fault, load, private_stack)

        load, faults, writes, lost, text = server_faults(private_stack, tmp_path, seed, fill_the_wal_disk)
        duplicates = writes.duplicates()
        influx.stop()  # before its WAL's tmpfs goes
    assert "no space left on device" in text  # InfluxDB's own words are in the log too
    reliability.add(
        Row("InfluxDB's disk full (WAL on a 32 MiB tmpfs), then restarted", 1, load.published, faults.in_flight,
            lost, duplicates, faults.recovery, seconds=time.monotonic() - started)
    )  # fmt: skip


def test_spool_disk_full_pauses_ingest_and_loses_nothing(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    """Nearly full: a warning, then ingest stops acknowledging (the broker keeps the messages) until there
    is room. Full at once (ENOSPC in the middle of a commit): the commit is cut back, nothing is corrupt."""
    rng = seeded(seed, "disk-full")
    started = time.monotonic()
    home, disk = tmp_path / "home", tmp_path / "disk"
    load = Load(private_stack, home / "manifests" / "load.json", rate=1000, duration_s=40, seed=seed)
    writes = WriteCounter(private_stack)
    faults = Faults()
    with tmpfs(disk, DISK_MIB) as mounted:
        spool = disk / "spool"
        common = {"client_id": "sys-disk", "spool_dir": spool, "segment_max_mib": 0.25}
        if mounted:  # the disk is shared: another program's log leaves 2.5 MiB, ingest keeps 1 MiB free
            nearly = ingest_env(private_stack, home, **common, min_free_disk_mib=1)
            fill(disk / "other.log", leave_bytes=5 * 2**19)
        else:  # no tmpfs without root: the spool's own budget stands in for the disk
            nearly = ingest_env(private_stack, home, **common, spool_max_mib=1.5, min_free_disk_mib=0)
        ingest = IngestProcess(nearly, tmp_path / "ingest-1.log")
        try:
            ingest.wait_log("subscribed to")
            load.start()
            ingest.wait_log("spool is filling", 30)
            ingest.wait_log("spool budget reached", 30)
            fault = faults.begin()  # from here the broker keeps what ingest no longer acknowledges
            time.sleep(rng.uniform(1.0, 3.0))
            if mounted:
                (disk / "other.log").unlink()  # an operator makes room
                ingest.wait_log("spool has room again")
            else:  # an operator raises the budget and restarts ingest
                assert ingest.terminate() == 0
                ingest = IngestProcess({**nearly, "SMARTCITY_INGEST_SPOOL_MAX_MIB": "64"}, tmp_path / "ingest-2.log")
                ingest.wait_log("subscribed to")
            end_fault(fault, load, private_stack)
            if mounted:  # with no free-disk minimum, a sudden full disk fails a commit in the middle
                assert ingest.terminate() == 0
                ingest = IngestProcess({**nearly, "SMARTCITY_INGEST_MIN_FREE_DISK_MIB": "0"}, tmp_path / "ingest-2.log")
                ingest.wait_log("subscribed to")
                time.sleep(rng.uniform(0.5, 2.0))
                fault = faults.begin()
                fill(disk / "other.log")
                ingest.wait_log("No space left on device", 30)
                time.sleep(rng.uniform(0.5, 2.0))
                (disk / "other.log").unlink()
                end_fault(fault, load, private_stack)
            finish(load, private_stack)
            assert ingest.terminate() == 0
        finally:
            ingest.__exit__()
        assert corrupt_lines(spool) == [] and not list(spool.glob("*/*.corrupt"))
        result = balanced_audit(private_stack, home, [load.manifest_path], load.registry, spool)
    reliability.add(
        Row(
            "spool disk full (8 MiB tmpfs: nearly full, then ENOSPC)"
            if mounted
            else "spool budget reached (spool_max_mib)",
            len(faults.runs),
            load.published,
            faults.in_flight,
            result.total().missing,
            writes.duplicates(),
            faults.recovery,
            seconds=time.monotonic() - started,
        )
    )
