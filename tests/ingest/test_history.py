"""The conflict index: first value wins, duplicates pass, old entries go, a rebuild from the spool agrees."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ingest.history import INSERT_CHUNK, MAX_LOAD, SLOT_BYTES, History, values_hash
from ingest.spool import StreamWriter
from sensors.reading import Reading

NOW = 1_796_000_000_000
HOUR = 3_600_000
WINDOW = 72 * HOUR


def reading(sensor: str, ts: int, **values: float) -> Reading:
    return Reading(sensor_id=sensor, kind="air_quality", ts=ts, values=values or {"pm25": 1.0}, vendor="v",
                   super_cluster="andaman", city="phuket", district="d", site="s")  # fmt: skip


def test_the_first_values_win_and_the_same_values_are_a_duplicate() -> None:
    history = History(WINDOW)
    first = reading("a", NOW, pm25=5.0, pm10=7.0)
    assert history.admit([first], NOW) is None
    assert history.admit([reading("a", NOW, pm10=7.0, pm25=5.0)], NOW) is None  # the same, in another order
    assert history.admit([reading("a", NOW, pm25=5.0)], NOW) is not None  # a metric left out is a change too
    clash = reading("a", NOW, pm25=999.0, pm10=7.0)
    assert history.admit([clash], NOW) is clash
    assert history.stored("a", NOW) == values_hash({"pm25": 5.0, "pm10": 7.0})
    assert history.admit([reading("b", NOW, pm25=999.0, pm10=7.0)], NOW) is None  # another sensor
    assert len(history) == 2


def test_a_message_with_one_conflict_records_none_of_its_readings() -> None:
    history = History(WINDOW)
    history.admit([reading("a", NOW)], NOW)
    assert history.admit([reading("a", NOW - 1000), reading("a", NOW, pm25=2.0)], NOW) is not None
    assert history.stored("a", NOW - 1000) is None


def test_values_hash_ignores_the_order_of_the_metrics() -> None:
    # A restart hashes the stored values again (`rebuild`), so the hash need only agree within a
    # process; test_rejects_history_it checks a rewrite refused across a restart of ingest.
    assert values_hash({"pm25": 5.0, "pm10": 7.5}) == values_hash({"pm10": 7.5, "pm25": 5.0})
    assert values_hash({"pm25": 5.0}) != values_hash({"pm10": 5.0})
    assert values_hash({"pm25": 5.0, "pm10": 7.5}) != values_hash({"pm25": 7.5, "pm10": 5.0})
    assert 0 <= values_hash({"pm25": -1.0}) < 2**64


def test_it_grows_and_drops_what_is_older_than_the_window() -> None:
    history = History(HOUR, slots=1024)
    # 40,000 readings 1 s apart: 11 h, of which only the last hour (and the 5 min future slack) stays.
    for n in range(40_000):
        ts = NOW - 40_000_000 + n * 1000
        assert history.admit([reading("a", ts, pm25=float(n))], ts) is None
    assert len(history) <= MAX_LOAD * history.slots
    assert history.slots <= 16_384, "the table follows the window, not the history"
    last = NOW - 40_000_000 + 39_999 * 1000
    assert history.stored("a", last) == values_hash({"pm25": 39_999.0})
    assert history.admit([reading("a", last, pm25=1.0)], last) is not None


def test_a_resize_larger_than_an_insert_chunk_keeps_every_entry() -> None:
    """The resize inserts a chunk at a time (to bound its memory): every entry survives, none twice."""
    history = History(WINDOW)
    count = 3 * INSERT_CHUNK + 123
    for n in range(count):
        assert history.admit([reading(f"s{n % 97}", NOW - n * 1000, pm25=float(n))], NOW) is None
    assert history.slots * MAX_LOAD > count > INSERT_CHUNK * 2, "resized past a chunk"
    assert len(history) == count
    assert all(history.stored(f"s{n % 97}", NOW - n * 1000) == values_hash({"pm25": float(n)}) for n in range(count))


def test_rebuild_from_the_spool_keeps_the_first_value_and_skips_old_segments(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "s"
    writer: StreamWriter[int] = StreamWriter(stream, segment_max_bytes=300, segment_max_age_s=3600)
    writer.append_readings([reading("a", NOW - 100 * HOUR)], 0)  # older than the window
    writer.append_readings([reading("a", NOW - HOUR, pm25=5.0)], 1)
    writer.append_readings([reading("a", NOW - HOUR, pm25=6.0)], 2)  # stored by an older ingest: not the first
    for n in range(20):
        writer.append_readings([reading("b", NOW - n * 1000, pm25=float(n))], 3 + n)
        writer.commit()
    writer.close()
    history = History(WINDOW)
    assert history.rebuild(stream, NOW) == 21
    assert history.stored("a", NOW - HOUR) == values_hash({"pm25": 5.0})
    assert history.stored("a", NOW - 100 * HOUR) is None
    assert history.stored("b", NOW - 19_000) == values_hash({"pm25": 19.0})
    assert history.admit([reading("a", NOW - HOUR, pm25=6.0)], NOW) is not None


def test_at_its_memory_cap_it_keeps_the_newest_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    history = History(WINDOW, max_bytes=SLOT_BYTES * 8192)  # 8,192 slots: 128 KiB
    with caplog.at_level(logging.WARNING):
        for n in range(20_000):  # a vendor flooding valid readings 1 s apart, all within the window
            ts = NOW - 20_000_000 + n * 1000
            assert history.admit([reading("a", ts, pm25=float(n))], NOW) is None
    assert history.slots == 8192 and len(history) <= MAX_LOAD * 8192
    assert history.checked_from_ms is not None and history.checked_from_ms > NOW - 20_000_000
    last = NOW - 20_000_000 + 19_999 * 1000
    assert history.admit([reading("a", last, pm25=1.0)], NOW) is not None, "the newest are still checked"
    assert history.stored("a", NOW - 20_000_000) is None, "the oldest made room"
    assert any("conflict index at its memory cap" in r.message for r in caplog.records)
