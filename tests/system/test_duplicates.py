"""Duplicates and disorder change nothing: a storm ends with the InfluxDB contents of a clean run.

The same stream (the simulator's fleet with gateway retries, late and
out-of-order readings) goes to two stacks of their own:

- clean: published once, as due, to an ingest that runs undisturbed;
- storm: published three times (as due, shuffled, reversed), while ingest is
  killed with -9 at random points, so the broker redelivers what it had not
  acknowledged (QoS 1) on top of the republished copies.

The canonical dumps of the raw measurements (schema, series, every point and
value) must be equal, and both audits balance.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sensors.simulator import DUPLICATE, STORED, Message
from tests.ingest.helpers import IngestProcess, ingest_env
from tests.servers import StackHandle, start_stack
from tests.system.harness import (
    STORED_FAULTS,
    Faults,
    Load,
    WriteCounter,
    balanced_audit,
    differences,
    dump,
    end_fault,
    seeded,
    wait_stored,
)
from tests.system.report import Report, Row

pytestmark = pytest.mark.system

KILLS = 5
RATE = 1000
DURATION_S = 5  # of the stream, published once


def storm(rng: random.Random) -> Callable[[list[Message]], list[Message]]:
    """The stream as due, then shuffled, then reversed; the later copies are duplicates to the audit."""

    def reorder(messages: list[Message]) -> list[Message]:
        again = [m._replace(category=DUPLICATE) if m.category in STORED else m for m in messages]
        return [*messages, *rng.sample(again, len(again)), *reversed(again)]

    return reorder


def test_redelivery_storms_and_disorder_end_as_a_clean_run(
    private_stack: StackHandle, tmp_path: Path, seed: int, reliability: Report
) -> None:
    rng = seeded(seed, "storm")
    started = time.monotonic()
    clean_stack = start_stack(tmp_path / "clean-stack")
    try:
        home = tmp_path / "clean"
        once = Load(clean_stack, home / "manifests" / "once.json", rate=RATE, duration_s=DURATION_S, seed=seed,
                    faults=STORED_FAULTS)  # fmt: skip
        with IngestProcess(ingest_env(clean_stack, home, client_id="sys-clean"), tmp_path / "clean.log") as ingest:
            ingest.wait_log("subscribed to")
            once.start()
            once.finish()
            wait_stored(clean_stack, once, once.stored_keys_due(time.monotonic()), 60)
            assert ingest.terminate() == 0
        balanced_audit(clean_stack, home, [once.manifest_path], once.registry)
        clean = dump(clean_stack)
    finally:
        clean_stack.down()

    home = tmp_path / "storm"
    load = Load(private_stack, home / "manifests" / "storm.json", rate=RATE, duration_s=DURATION_S, seed=seed,
                faults=STORED_FAULTS, start_ms=once.start_ms, reorder=storm(rng))  # fmt: skip
    env = ingest_env(private_stack, home, client_id="sys-storm")
    logs = iter(tmp_path / f"storm-{n}.log" for n in range(100))
    writes = WriteCounter(private_stack)
    faults = Faults()
    proc = IngestProcess(env, next(logs))
    try:
        proc.wait_log("subscribed to")
        load.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 2.0))
            fault = faults.begin()
            proc.kill()
            proc = IngestProcess(env, next(logs))
            proc.wait_log("subscribed to")
            end_fault(fault, load, private_stack)
        load.finish()
        wait_stored(private_stack, load, load.stored_keys_due(time.monotonic()), 60)
        assert proc.terminate() == 0
    finally:
        proc.__exit__()
    result = balanced_audit(private_stack, home, [load.manifest_path], load.registry)
    stormy = dump(private_stack)
    assert not (diff := differences(stormy, clean)), diff  # pytest's own diff is thousands of lines
    assert load.published >= 3 * once.published
    reliability.add(
        Row(
            "QoS 1 redelivery storm: stream sent 3x (as due, shuffled, reversed), kill -9 of ingest",
            KILLS,
            load.published,
            faults.in_flight,
            result.total().missing,
            writes.duplicates(),
            faults.recovery,
            extra=sum(len(m["points"]) for m in stormy.values()) - sum(len(m["points"]) for m in clean.values()),
            seconds=time.monotonic() - started,
        )
    )
