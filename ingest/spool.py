"""The durable spool, writing side: group-committed, checksummed, append-only segments.

The layout (stream folders, `.open` and `.seg` files, metadata, closing
protocol) is `sensors.spool`'s, so the pipelines read what is written here
without importing `ingest`. This module adds what only the writer needs, and
the names its followers share (segment listing, stream locks, `SpoolError`):

- `StreamWriter` buffers records with an opaque token per MQTT message;
  `commit()` writes and fsyncs everything buffered (one group commit) and
  returns the tokens that are now durable, in arrival order. Only those
  messages may be acknowledged.
- Segments rotate by size and by age (counted from their first record) and
  are closed by writing metadata, then renaming `.open` to `.seg`.
- `recover_stream()` runs before a stream is reopened: the torn or corrupt
  tail of an `.open` segment left by a crash is truncated (and logged), and
  the segment is closed properly. Nothing after a bad line is propagated.
- `inspect_segment` checks a closed segment against its metadata (size,
  CRC-32, records) when the writer starts and when the raw writer opens it; a
  damaged one is reported once (a `.damage.json` note next to it), with the
  number of records lost, and its intact records are still written.

Following a stream (`StreamTail`, `Offsets`) is `ingest.spooltail`; deleting
old segments (`collect_garbage`, `expire_rejects`) is `ingest.retention`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from sensors.errors import SmartcityError
from sensors.files import fsync_dir
from sensors.reading import (
    CorruptRecord,
    Reading,
    Rejection,
    decode_reading,
    encode_reading,
    encode_rejection,
    verify_line,
)
from sensors.spool import (
    CLOSED_SUFFIX,
    META_SUFFIX,
    OPEN_SUFFIX,
    READINGS,
    REJECTS,
    BadMetadata,
    SegmentCheck,
    SegmentInfo,
    check_segment,
    read_meta,
    segment_name,
    write_meta,
)

logger = logging.getLogger(__name__)

RECORD_TYPES = (READINGS, REJECTS)
WRITER_LOCK = "ingest.lock"  # held by the process appending to the stream
RAW_WRITER_LOCK = "raw-writer.lock"  # held by the process writing the stream to InfluxDB
DAMAGE_SUFFIX = ".damage.json"  # next to a closed segment found damaged: reported once, kept for inspection
_FILE = re.compile(r"^(readings|rejects)-(\d{12})(\.open|\.seg)$")

T = TypeVar("T")


class SpoolError(SmartcityError):
    """The spool cannot be written (disk full, permissions); the message names the file."""


class StreamLocked(SpoolError):
    """Another process holds the stream (appending to it, or writing it to InfluxDB)."""


def lock_stream(stream_dir: Path, name: str, holder: str) -> int:
    """Take an exclusive lock file in a stream folder; returns its descriptor (closing it releases
    the lock), or raises `StreamLocked` naming the process that holds it."""
    path = stream_dir / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StreamLocked(f"{path}: locked by pid {owner}: {holder}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def segment_files(stream_dir: Path, record_type: str) -> dict[int, Path]:
    """Sequence number -> path of every segment (open or closed) of one type in a stream."""
    found: dict[int, Path] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(stream_dir):
            match = _FILE.match(entry.name)
            if match and match.group(1) == record_type:
                found[int(match.group(2))] = Path(entry.path)
    return found


def streams(root: Path) -> list[Path]:
    """Stream folders under a spool root."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(Path(e.path) for e in os.scandir(root) if e.is_dir())
    return []


def usage_bytes(root: Path) -> int:
    """Bytes used by every file of every stream under `root`."""
    total = 0
    for stream_dir in streams(root):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(stream_dir):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
    return total


@dataclass
class _Batch:
    """Records of one type waiting for the next commit, with what the segment metadata needs."""

    data: bytearray = field(default_factory=bytearray)
    count: int = 0
    min_ts: int | None = None
    max_ts: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)

    def add_readings(self, readings: Sequence[Reading]) -> None:
        data, kinds = self.data, self.kinds
        for reading in readings:
            data += encode_reading(reading)
            ts = reading.ts
            if self.min_ts is None or ts < self.min_ts:
                self.min_ts = ts
            if self.max_ts is None or ts > self.max_ts:
                self.max_ts = ts
            kinds[reading.kind] = kinds.get(reading.kind, 0) + 1
        self.count += len(readings)

    def merge(self, other: _Batch) -> None:
        """Fold `other`'s metadata into this one (the data is not kept)."""
        self.count += other.count
        if other.min_ts is not None and (self.min_ts is None or other.min_ts < self.min_ts):
            self.min_ts = other.min_ts
        if other.max_ts is not None and (self.max_ts is None or other.max_ts > self.max_ts):
            self.max_ts = other.max_ts
        for kind, n in other.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + n


class _OpenSegment:
    """The segment being appended to, for one record type of one stream."""

    def __init__(self, stream_dir: Path, record_type: str, seq: int) -> None:
        self.stream_dir = stream_dir
        self.record_type = record_type
        self.seq = seq
        self.path = stream_dir / segment_name(record_type, seq, OPEN_SUFFIX)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fsync_dir(stream_dir)
        self.size = 0  # durable bytes
        self.crc32 = 0  # of the durable bytes
        self.meta = _Batch()
        self.first_write: float | None = None  # monotonic time of the first record

    def append(self, batch: _Batch) -> None:
        """Write and fsync a batch; on failure the segment is cut back to its last durable size."""
        view = memoryview(batch.data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            os.fdatasync(self.fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise SpoolError(f"{self.path}: cannot write: {err.strerror}") from err
        self.size += len(batch.data)
        self.crc32 = zlib.crc32(batch.data, self.crc32)
        self.meta.merge(batch)
        if self.first_write is None:
            self.first_write = time.monotonic()

    def close(self) -> SegmentInfo | None:
        """Close the segment: metadata first (atomic), then `.open` -> `.seg`; an empty one is removed."""
        os.close(self.fd)
        if self.meta.count == 0:
            self.path.unlink()
            fsync_dir(self.stream_dir)
            return None
        return _close_file(
            self.path, self.stream_dir.name, self.record_type, self.seq, self.meta, self.size, self.crc32
        )


def _close_file(
    path: Path, stream: str, record_type: str, seq: int, meta: _Batch, size: int, crc32: int
) -> SegmentInfo:
    closed = path.with_name(segment_name(record_type, seq, CLOSED_SUFFIX))
    info = SegmentInfo(
        stream=stream,
        record_type=record_type,
        seq=seq,
        count=meta.count,
        bytes=size,
        min_ts=meta.min_ts if record_type == READINGS else None,
        max_ts=meta.max_ts if record_type == READINGS else None,
        closed_at=int(time.time() * 1000),
        kinds=dict(sorted(meta.kinds.items())) if record_type == READINGS else {},
        crc32=crc32,
        path=closed,
    )
    write_meta(info, closed)
    os.replace(path, closed)
    fsync_dir(path.parent)
    return info


@dataclass(frozen=True)
class Recovered:
    """What `recover_stream` found in one `.open` segment left by a previous run."""

    path: Path
    records: int
    truncated_bytes: int


def recover_stream(stream_dir: Path) -> list[Recovered]:
    """Close the `.open` segments a previous run left, cutting any torn or corrupt tail first.

    A segment is only ever appended to, so a crash can leave at worst a partial
    last line; everything from the first line that does not verify is cut off.
    If verified lines follow a bad one (a corruption, not a torn write), the cut
    bytes are kept next to the segment as `.corrupt` for inspection.
    """
    results: list[Recovered] = []
    for leftover in stream_dir.glob(f"*{META_SUFFIX}.tmp"):
        leftover.unlink()
    for record_type in RECORD_TYPES:
        for seq, path in sorted(segment_files(stream_dir, record_type).items()):
            if path.suffix != OPEN_SUFFIX:
                continue
            results.append(_recover_segment(path, stream_dir.name, record_type, seq))
    return results


def _recover_segment(path: Path, stream: str, record_type: str, seq: int) -> Recovered:
    data = path.read_bytes()
    meta = _Batch()
    good = 0
    for line in data.splitlines(keepends=True):
        if not verify_line(line):
            break
        if record_type == READINGS:
            try:
                meta.add_readings([decode_reading(line)])
            except CorruptRecord:
                break
        else:
            meta.count += 1
        good += len(line)
    meta.data = bytearray()
    cut = len(data) - good
    if cut:
        tail = data[good:]
        if any(verify_line(line) for line in tail.splitlines(keepends=True)[1:]):
            corrupt = path.with_name(path.name + ".corrupt")
            corrupt.write_bytes(tail)
            logger.error(
                "%s: corrupt line at byte %d followed by valid records; cut %d bytes, kept them in %s",
                path,
                good,
                cut,
                corrupt,
            )
        else:
            logger.warning(
                "%s: torn tail of %d bytes after %d records cut (crash during a write)", path, cut, meta.count
            )
        with open(path, "r+b") as handle:
            handle.truncate(good)
            os.fsync(handle.fileno())
    if meta.count == 0:
        path.unlink()
        fsync_dir(path.parent)
    else:
        _close_file(path, stream, record_type, seq, meta, good, zlib.crc32(data[:good]))
        logger.info("%s: closed the segment a previous run left open (%d records)", path, meta.count)
    return Recovered(path, meta.count, cut)


def inspect_segment(path: Path, full: bool = True, repair: bool = False) -> SegmentCheck | None:
    """Check a closed segment against its metadata; the check if it is damaged and not reported before.

    `full=False` only compares the size (a stat, for every segment at start-up);
    a size that differs, or `full`, reads the segment (CRC-32 and records). A
    damaged segment is logged as an error with the number of records lost, and
    a `.damage.json` note next to it keeps it from being reported again.
    Unreadable metadata is logged; with `repair` (the stream's own writer, at
    start-up) it is written anew from the segment's verified records.
    """
    note = path.with_name(path.name + DAMAGE_SUFFIX)
    if note.exists():
        return None
    try:
        info = read_meta(path)
        if not full and path.stat().st_size == info.bytes:
            return None
        check = check_segment(info)
    except BadMetadata as err:
        if not path.exists():
            return None  # deleted by the retention meanwhile
        if repair:
            info = _rebuild_meta(path)
            logger.error(
                "%s; written anew from the segment (%d verified records; any lost before cannot be counted)",
                err,
                info.count,
            )
        else:
            logger.error("%s; its records are still written to InfluxDB, but the pipelines skip it", err)
        return None
    except FileNotFoundError:
        return None  # deleted by the retention meanwhile
    if not check.damaged:
        return None
    logger.error("%s", check.describe())
    with contextlib.suppress(OSError):  # a note that cannot be written only means a second report
        note.write_text(
            json.dumps({"lost": check.lost, "intact": check.intact, "bytes": check.size, "crc32": check.crc32})
        )
    return check


def _rebuild_meta(path: Path) -> SegmentInfo:
    """Metadata for a closed segment from its verified records (its own is unreadable)."""
    match = _FILE.match(path.name)
    assert match is not None
    record_type, seq = match.group(1), int(match.group(2))
    data = path.read_bytes()
    meta = _Batch()
    for line in data.splitlines(keepends=True):
        if record_type == READINGS:
            with contextlib.suppress(CorruptRecord):
                meta.add_readings([decode_reading(line)])
        elif verify_line(line):
            meta.count += 1
    meta.data = bytearray()
    return _close_file(path, path.parent.name, record_type, seq, meta, len(data), zlib.crc32(data))


def inspect_stream(stream_dir: Path) -> list[SegmentCheck]:
    """The damaged closed segments of a stream, by size (cheap enough for every start)."""
    found = []
    for record_type in RECORD_TYPES:
        for _, path in sorted(segment_files(stream_dir, record_type).items()):
            if path.suffix == CLOSED_SUFFIX:
                check = inspect_segment(path, full=False, repair=True)
                if check is not None:
                    found.append(check)
    return found


class StreamWriter(Generic[T]):
    """Appends readings and rejections of one stream, with group commit and rotation.

    `append_*` may be called from one thread (the MQTT network loop) while
    another calls `commit()`; each record carries a token (e.g. the MQTT message
    to acknowledge) that `commit()` hands back once the record is on disk.
    """

    def __init__(self, stream_dir: Path, *, segment_max_bytes: int, segment_max_age_s: float) -> None:
        self.stream_dir = stream_dir
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_s = segment_max_age_s
        try:
            stream_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # readings are private
            # One writer per stream: a second process with the same client id must not append here.
            self._lock_fd: int | None = lock_stream(
                stream_dir, WRITER_LOCK, "another ingest process uses this client id"
            )
            self.recovered = recover_stream(stream_dir)
            self.damaged = inspect_stream(stream_dir)
        except OSError as err:
            raise SpoolError(f"{stream_dir}: cannot open the spool stream: {err.strerror or err}") from err
        self._next_seq = {rt: max(segment_files(stream_dir, rt), default=0) + 1 for rt in RECORD_TYPES}
        self._segments: dict[str, _OpenSegment | None] = dict.fromkeys(RECORD_TYPES)
        self._lock = threading.Lock()  # guards the pending batches and tokens
        self._commit_lock = threading.Lock()
        self._pending = {rt: _Batch() for rt in RECORD_TYPES}
        self._tokens: list[T] = []
        self.closed: list[SegmentInfo] = []  # segments closed by this writer (most recent last)
        self.bytes_written = 0  # by this writer, since it started

    @property
    def pending_bytes(self) -> int:
        return len(self._pending[READINGS].data) + len(self._pending[REJECTS].data)

    @property
    def had_data(self) -> bool:
        """True if the stream held segments before this writer started (a previous run existed)."""
        return any(seq > 1 for seq in self._next_seq.values()) or bool(self.recovered)

    def append_readings(self, readings: Sequence[Reading], token: T) -> None:
        with self._lock:
            self._pending[READINGS].add_readings(readings)
            self._tokens.append(token)

    def append_rejection(self, rejection: Rejection | bytes, token: T) -> None:
        """A rejection, or its encoded line (`encode_rejection`), to store with the next commit."""
        line = rejection if isinstance(rejection, bytes) else encode_rejection(rejection)
        with self._lock:
            batch = self._pending[REJECTS]
            batch.data += line
            batch.count += 1
            self._tokens.append(token)

    def append_token(self, token: T) -> None:
        """A message with nothing to store (a rejection over its vendor's budget): its token comes back from
        the next commit, in arrival order with the others."""
        with self._lock:
            self._tokens.append(token)

    def commit(self) -> list[T]:
        """Write and fsync everything appended so far; returns the tokens now durable.

        On a write error (`SpoolError`) the records of this commit are dropped
        (the segment is cut back to its durable size) and their tokens are not
        returned: their messages must not be acknowledged.
        """
        with self._commit_lock:
            with self._lock:
                pending, tokens = self._pending, self._tokens
                self._pending = {rt: _Batch() for rt in RECORD_TYPES}
                self._tokens = []
            for record_type, batch in pending.items():
                if batch.count:
                    self._segment(record_type).append(batch)
                    self.bytes_written += len(batch.data)
            self._rotate(force=False)
            return tokens

    def close(self) -> None:
        """Commit what is pending and close the open segments (so the pipelines see everything)."""
        self.commit()
        with self._commit_lock:
            self._rotate(force=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def __enter__(self) -> StreamWriter[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _segment(self, record_type: str) -> _OpenSegment:
        segment = self._segments[record_type]
        if segment is None:
            seq = self._next_seq[record_type]
            self._next_seq[record_type] = seq + 1
            try:
                segment = _OpenSegment(self.stream_dir, record_type, seq)
            except OSError as err:
                raise SpoolError(f"{self.stream_dir}: cannot create a segment: {err.strerror}") from err
            self._segments[record_type] = segment
        return segment

    def _rotate(self, force: bool) -> None:
        now = time.monotonic()
        for record_type, segment in self._segments.items():
            if segment is None:
                continue
            due = segment.size >= self.segment_max_bytes or (
                segment.first_write is not None and now - segment.first_write >= self.segment_max_age_s
            )
            if force or due:
                self._segments[record_type] = None
                try:
                    info = segment.close()
                except OSError as err:
                    raise SpoolError(f"{segment.path}: cannot close: {err.strerror}") from err
                if info is not None:
                    self.closed.append(info)
                    del self.closed[:-100]
                    logger.debug("closed %s (%d records, %d bytes)", info.path.name, info.count, info.bytes)
