"""The reject store budget per vendor: a token bucket and a byte cap over the retention, rebuilt at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ingest.rejectbudget import HOUR_MS, RejectBudget
from ingest.spool import StreamWriter
from sensors.reading import Rejection, encode_rejection

NOW = 1_796_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_a_token_bucket_per_vendor() -> None:
    clock = Clock()
    budget = RejectBudget(per_s=10, max_bytes=0, retention_ms=0, clock=clock)
    assert sum(budget.admit("a", 100, NOW) for _ in range(50)) == 10  # one second's burst
    assert sum(budget.admit("b", 100, NOW) for _ in range(50)) == 10  # another vendor is not affected
    clock.now = 0.5
    assert sum(budget.admit("a", 100, NOW) for _ in range(50)) == 5
    clock.now = 100.0
    assert sum(budget.admit("a", 100, NOW) for _ in range(50)) == 10  # the bucket holds one second, no more


def test_the_byte_cap_counts_the_retention_and_frees_as_hours_expire(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    budget = RejectBudget(per_s=0, max_bytes=1000, retention_ms=2 * HOUR_MS, clock=clock)
    with caplog.at_level(logging.WARNING):
        assert [budget.admit(None, 400, NOW) for _ in range(4)] == [True, True, False, False]
    assert budget.stored_bytes("_unknown") == 800
    assert len([r for r in caplog.records if "over its reject store budget" in r.message]) == 1  # rate-limited
    assert budget.admit(None, 400, NOW + HOUR_MS) is False
    assert budget.admit(None, 400, NOW + 3 * HOUR_MS) is True  # the first hour left the retention


def test_rebuild_counts_the_stored_rejections_of_the_retention(tmp_path: Path) -> None:
    stream = tmp_path / "s"
    writer: StreamWriter[int] = StreamWriter(stream, segment_max_bytes=10**6, segment_max_age_s=3600)
    sizes = 0
    for n, received in enumerate(["2026-11-30T00:00:00.000Z", "2026-12-03T07:00:00.000Z"]):
        rejection = Rejection(code="invalid_json", detail="x", topic="t", received_at=received, payload_b64="",
                              vendor="v")  # fmt: skip
        writer.append_rejection(rejection, n)
        sizes = len(encode_rejection(rejection))
    writer.close()
    now_ms = 1_796_284_800_000  # 2026-12-03T08:00Z
    budget = RejectBudget(per_s=0, max_bytes=10**6, retention_ms=24 * HOUR_MS)
    assert budget.rebuild(stream, now_ms) == 1  # the one of 2026-11-30 is past the 24 h
    assert budget.stored_bytes("v") == sizes
