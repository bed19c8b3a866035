"""The spool's writing side: group commit, rotation, crash recovery, tailing, offsets and retention.

What the pipelines rely on is checked through `sensors.spool`, the reader
they use: closed segments with metadata, never a torn line.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from ingest.retention import collect_garbage, expire_rejects
from ingest.spool import (
    DAMAGE_SUFFIX,
    SpoolError,
    StreamLocked,
    StreamWriter,
    inspect_segment,
    recover_stream,
    segment_files,
)
from ingest.spooltail import Offsets, Position, StreamTail
from sensors.reading import Reading, Rejection, encode_reading
from sensors.spool import (
    READINGS,
    REJECTS,
    BadMetadata,
    check_segment,
    closed_segments,
    meta_path,
    read_meta,
    read_readings,
    read_rejections,
)


def reading(i: int, kind: str = "air_quality") -> Reading:
    return Reading(
        sensor_id=f"pkt-aq-{i % 40 + 1:03d}",
        kind=kind,
        ts=1_764_000_000_000 + i * 1000,
        values={"pm25": float(i % 500)},
        vendor="siam-airsense",
        super_cluster="andaman",
        city="phuket",
        district="kathu",
        site="patong-beach",
        seq=i,
        received=1_764_000_000_500 + i * 1000,
    )


def rejection(i: int) -> Rejection:
    return Rejection(
        code="invalid_json",
        detail="payload is not valid JSON",
        topic="smartcity/v1/phuket/air_quality/pkt-aq-001",
        received_at="2026-11-25T00:00:00.000Z",
        payload_b64="e30=",
        sensor_id="pkt-aq-001",
        vendor="siam-airsense",
    )


def writer(stream: Path, max_bytes: int = 1 << 26, max_age_s: float = 3600) -> StreamWriter[int]:
    return StreamWriter(stream, segment_max_bytes=max_bytes, segment_max_age_s=max_age_s)


def test_commit_returns_tokens_in_order_only_once_records_are_on_disk(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    spool = writer(stream)
    spool.append_readings([reading(0)], 10)
    spool.append_rejection(rejection(1), 11)
    spool.append_readings([reading(2), reading(3)], 12)
    assert not any(stream.glob("*.open")), "nothing is written before the commit"
    assert spool.commit() == [10, 11, 12]
    assert spool.commit() == []
    opened = sorted(p.name for p in stream.glob("*.open"))
    assert opened == ["readings-000000000001.open", "rejects-000000000001.open"]
    assert (stream / "readings-000000000001.open").read_bytes() == b"".join(
        encode_reading(reading(i)) for i in (0, 2, 3)
    )
    spool.close()
    assert not any(stream.glob("*.open")), "close() closes the open segments"


def test_closed_segments_are_what_the_pipelines_read(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = writer(root / "ingest-a", max_bytes=2000)
    for i in range(30):
        spool.append_readings([reading(i, kind="air_quality" if i % 3 else "weather")], i)
        spool.commit()
    spool.append_rejection(rejection(0), 99)
    spool.close()
    segments = closed_segments(root)
    assert len(segments) > 3, "rotated by size"
    assert [s.seq for s in segments] == list(range(1, len(segments) + 1))
    assert all(s.bytes <= 2000 + 400 for s in segments)
    readings = [r for s in segments for r in read_readings(s.path)]
    assert readings == [reading(i, kind="air_quality" if i % 3 else "weather") for i in range(30)]
    first = segments[0]
    in_first = list(read_readings(first.path))
    assert first.count == len(in_first)
    assert first.min_ts == min(r.ts for r in in_first) and first.max_ts == max(r.ts for r in in_first)
    assert sum(first.kinds.values()) == first.count
    rejects = closed_segments(root, REJECTS)
    assert [r for s in rejects for r in read_rejections(s.path)] == [rejection(0)]
    assert rejects[0].min_ts is None


def test_segments_rotate_by_age_of_their_first_record(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    spool = writer(stream, max_age_s=0.2)
    spool.commit()
    time.sleep(0.3)
    spool.commit()
    assert not list(stream.glob("*.open")), "an idle stream makes no empty segments"
    spool.append_readings([reading(0)], 0)
    spool.commit()
    assert (stream / "readings-000000000001.open").exists()
    time.sleep(0.3)
    spool.commit()
    assert (stream / "readings-000000000001.seg").exists()
    spool.append_readings([reading(1)], 1)
    spool.commit()
    assert (stream / "readings-000000000002.open").exists()
    spool.close()


def test_a_torn_tail_is_cut_logged_and_the_segment_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "spool"
    stream = root / "ingest-a"
    spool = writer(stream)
    for i in range(5):
        spool.append_readings([reading(i)], i)
    spool.commit()
    crash(spool)
    segment = stream / "readings-000000000001.open"
    good = segment.stat().st_size
    torn = encode_reading(reading(5))[:37]
    with open(segment, "ab") as handle:
        handle.write(torn)
    caplog.set_level(logging.INFO, logger="ingest.spool")
    again = writer(stream)
    assert [(r.records, r.truncated_bytes) for r in again.recovered] == [(5, len(torn))]
    assert f"torn tail of {len(torn)} bytes" in caplog.text
    assert not segment.exists()
    [info] = closed_segments(root)
    assert info.bytes == good and info.count == 5
    assert list(read_readings(info.path)) == [reading(i) for i in range(5)]
    # The next segment continues the numbering; nothing is appended to the recovered one.
    again.append_readings([reading(6)], 6)
    again.commit()
    assert (stream / "readings-000000000002.open").exists()
    again.close()


def crash(spool: StreamWriter[int]) -> None:
    """What a kill -9 leaves: open segments as they are, the stream lock released."""
    for segment in spool._segments.values():
        if segment is not None:
            os.close(segment.fd)
    assert spool._lock_fd is not None
    os.close(spool._lock_fd)


def test_one_process_per_stream(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    first = writer(stream)
    with pytest.raises(StreamLocked, match=rf"ingest\.lock: locked by pid {os.getpid()}: another ingest process"):
        writer(stream)
    first.close()
    writer(stream).close()


def test_corruption_before_valid_records_is_cut_and_kept_aside(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    stream.mkdir(parents=True)
    lines = [encode_reading(reading(i)) for i in range(4)]
    bad = lines[1].replace(b"pkt", b"pkX")  # checksum no longer matches
    (stream / "readings-000000000003.open").write_bytes(lines[0] + bad + lines[2] + lines[3])
    (stream / "rejects-000000000001.open").write_bytes(b"")
    [readings, rejects] = recover_stream(stream)
    assert (readings.records, readings.truncated_bytes) == (1, len(bad) + len(lines[2]) + len(lines[3]))
    assert (stream / "readings-000000000003.open.corrupt").read_bytes() == bad + lines[2] + lines[3]
    assert list(read_readings(stream / "readings-000000000003.seg")) == [reading(0)]
    assert rejects.records == 0 and not (stream / "rejects-000000000001.open").exists()


def test_a_segment_closed_before_its_rename_is_finished_on_restart(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    stream = root / "ingest-a"
    spool = writer(stream)
    spool.append_readings([reading(0)], 0)
    spool.commit()
    spool.close()
    # Simulate a crash between writing the metadata and the rename.
    os.replace(stream / "readings-000000000001.seg", stream / "readings-000000000001.open")
    writer(stream).close()
    assert [s.count for s in closed_segments(root)] == [1]


def test_a_failed_write_returns_no_tokens_and_leaves_no_partial_record(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    spool = writer(stream)
    spool.append_readings([reading(0)], 0)
    spool.commit()
    segment = spool._segments[READINGS]
    assert segment is not None
    os.close(segment.fd)
    segment.fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail, as on a full or read-only disk
    spool.append_readings([reading(1)], 1)
    with pytest.raises(SpoolError, match="cannot write"):
        spool.commit()
    assert (stream / "readings-000000000001.open").read_bytes() == encode_reading(reading(0))


def test_tail_follows_open_and_closed_segments_and_never_returns_a_partial_line(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    spool = writer(stream, max_bytes=1500)
    tail = StreamTail(stream, Position())
    assert tail.read(100) == []
    got: list[Reading] = []
    for i in range(20):
        spool.append_readings([reading(i)], i)
        spool.commit()
        got += tail.read(3)
    segment = spool._segments[READINGS]
    assert segment is not None
    with open(segment.path, "ab") as handle:  # a record being written
        handle.write(encode_reading(reading(20))[:30])
    while batch := tail.read(7):
        got += batch
    assert got == [reading(i) for i in range(20)]
    position = tail.position
    assert segment_files(stream, READINGS)[position.seq].suffix == ".open"
    with open(segment.path, "ab") as handle:
        handle.write(encode_reading(reading(20))[30:])
    assert tail.read(10) == [reading(20)]
    tail.close()
    # A new tail from a saved position resumes right after it.
    resumed = StreamTail(stream, position)
    assert resumed.read(10) == [reading(20)]
    resumed.close()


def test_offsets_survive_restarts_and_name_the_file_when_unreadable(tmp_path: Path) -> None:
    offsets = Offsets(tmp_path)
    assert offsets.load() == Position()
    offsets.save(Position(7, 1234))
    assert Offsets(tmp_path).load() == Position(7, 1234)
    offsets.path.write_text("{")
    with pytest.raises(SpoolError, match=r"raw-writer\.offset\.json"):
        offsets.load()


def test_garbage_collection_keeps_unwritten_recent_and_newest_segments(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    spool = writer(stream, max_bytes=1)  # one segment per commit
    for i in range(5):
        spool.append_readings([reading(i)], i)
        spool.append_rejection(rejection(i), i)
        spool.commit()
    spool.close()
    now = int(time.time() * 1000)
    assert collect_garbage(stream, 0, Position(99, 0)) == [], "retention 0 keeps everything"
    assert collect_garbage(stream, 3600, Position(99, 0), now_ms=lambda: now) == [], "younger than the retention"
    later = now + 2 * 3600 * 1000
    deleted = collect_garbage(stream, 3600, Position(3, 0), 0, lambda: later)
    # Rejects 1-4 go (5 is the newest); no reading segment, as the pipelines have processed none.
    assert sorted(p.name for p in deleted) == [f"rejects-00000000000{i}.seg" for i in range(1, 5)]
    deleted = collect_garbage(stream, 3600, Position(3, 0), None, lambda: later)
    # Without a pipeline checkpoint, readings 1 and 2 go: the writer is in segment 3.
    assert sorted(p.name for p in deleted) == ["readings-000000000001.seg", "readings-000000000002.seg"]
    assert not any(p.name.startswith("readings-000000000001") for p in stream.iterdir())
    deleted = collect_garbage(stream, 3600, Position(99, 0), 3, lambda: later)
    assert [p.name for p in deleted] == ["readings-000000000003.seg"], "the pipelines are done up to segment 3"
    deleted = collect_garbage(stream, 3600, Position(99, 0), None, lambda: later)
    assert [p.name for p in deleted] == ["readings-000000000004.seg"]
    assert sorted(segment_files(stream, READINGS)) == [5] and sorted(segment_files(stream, REJECTS)) == [5]


def test_reject_retention_deletes_old_reject_segments_but_the_newest(tmp_path: Path) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    spool = writer(stream, max_bytes=1)  # one segment per commit
    for i in range(4):
        spool.append_readings([reading(i)], i)
        spool.append_rejection(rejection(i), i)
        spool.append_token(i)  # a rejection over its vendor's budget: nothing written, still handed back
        assert spool.commit() == [i, i, i]
    spool.close()
    now = int(time.time() * 1000)
    assert expire_rejects(stream, 0, now + 10**12) == [], "0 keeps them"
    assert expire_rejects(stream, 3600, now) == [], "younger than the retention"
    deleted = expire_rejects(stream, 3600, now + 2 * 3600 * 1000)
    assert sorted(p.name for p in deleted) == [f"rejects-00000000000{i}.seg" for i in range(1, 4)]
    assert sorted(segment_files(stream, REJECTS)) == [4] and sorted(segment_files(stream, READINGS)) == [1, 2, 3, 4]


def test_a_damaged_closed_segment_is_found_by_size_or_checksum_and_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    spool = writer(stream)
    for i in range(10):
        spool.append_readings([reading(i)], i)
    spool.close()
    [segment] = closed_segments(stream.parent)
    data = segment.path.read_bytes()
    assert segment.crc32 == zlib.crc32(data) and segment.bytes == len(data)
    assert not check_segment(segment).damaged and inspect_segment(segment.path) is None
    # One flipped bit: the size is the same, the checksum is not; one record lost.
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    segment.path.write_bytes(bytes(flipped))
    assert inspect_segment(segment.path, full=False) is None, "a size check cannot see it"
    with caplog.at_level(logging.ERROR):
        check = inspect_segment(segment.path)
    assert check is not None and (check.lost, check.intact) == (1, 9)
    assert "damaged closed segment: 1 of its 10 records lost, 9 intact" in caplog.text
    assert inspect_segment(segment.path) is None, "reported once"
    # Cut short: a start-up finds it by its size.
    segment.path.with_name(segment.path.name + DAMAGE_SUFFIX).unlink()
    segment.path.write_bytes(data[: len(data) * 6 // 10])
    [cut] = writer(stream).damaged
    assert cut.lost == 10 - sum(
        1 for line in data[: len(data) * 6 // 10].splitlines(keepends=True) if line.endswith(b"\n")
    )


def test_unreadable_metadata_and_records_are_skipped_and_named(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = writer(root / "ingest-a", max_bytes=1)  # a segment per commit
    for i in range(2):
        spool.append_rejection(rejection(i), i)
        spool.commit()
    spool.close()
    first, second = closed_segments(root, REJECTS)
    meta_path(first.path).write_text('{"stream": "ingest-a", "rec')
    with pytest.raises(BadMetadata, match="unreadable segment metadata"):
        read_meta(first.path)
    skipped: list[str] = []
    assert [s.seq for s in closed_segments(root, REJECTS, skipped=skipped)] == [2]
    second.path.write_bytes(second.path.read_bytes().replace(b"invalid_json", b"invalid_jsoN"))
    assert list(read_rejections(second.path, skipped)) == []
    assert len(skipped) == 2 and "skipped a record that does not verify" in skipped[1]


def test_unreadable_metadata_is_written_anew_from_the_segment_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stream = tmp_path / "spool" / "ingest-a"
    spool = writer(stream)
    for i in range(10):
        spool.append_readings([reading(i)], i)
    spool.close()
    [before] = closed_segments(stream.parent)
    meta = meta_path(before.path)
    meta.write_bytes(meta.read_bytes()[:25])
    assert closed_segments(stream.parent) == []
    with caplog.at_level(logging.ERROR):
        writer(stream).close()
    assert "unreadable segment metadata" in caplog.text and "written anew from the segment" in caplog.text
    [after] = closed_segments(stream.parent)
    assert after == replace(before, closed_at=after.closed_at)
