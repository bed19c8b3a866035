"""Following a spool stream: the raw writer's position in it and the readings after that position.

- `StreamTail` follows a stream's readings across its open and closed
  segments (`ingest.spool` writes them), checking each closed segment it opens
  with `inspect_segment`.
- `Offsets` keeps the raw writer's committed position durably, in an
  atomically replaced file in the stream folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from ingest.spool import SpoolError, inspect_segment, segment_files
from sensors.files import write_json_atomic
from sensors.reading import CorruptRecord, Reading, decode_reading, unframe
from sensors.spool import CLOSED_SUFFIX, OPEN_SUFFIX, READINGS, SegmentCheck, segment_name

logger = logging.getLogger(__name__)

OFFSET_FILE = "raw-writer.offset.json"

T = TypeVar("T")


@dataclass(frozen=True)
class Position:
    """Where a reader of a stream stands: segment `seq`, byte `offset` in it (after the last record read)."""

    seq: int = 0
    offset: int = 0


class Offsets:
    """The raw writer's committed position in one stream, kept in an atomically replaced file."""

    def __init__(self, stream_dir: Path) -> None:
        self.path = stream_dir / OFFSET_FILE

    def load(self) -> Position:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Position(int(data["seq"]), int(data["offset"]))
        except FileNotFoundError:
            return Position()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SpoolError(f"{self.path}: unreadable writer offset ({err}); delete it to rewrite the stream") from err

    def save(self, position: Position) -> None:
        write_json_atomic(
            self.path, {"seq": position.seq, "offset": position.offset, "saved_at": int(time.time() * 1000)}
        )


class StreamTail:
    """Follows the readings of one stream from a position, across its open and closed segments.

    It only returns complete lines that verify; a partial last line of the open
    segment is left for the next call. A line that does not verify in the
    middle of a segment is logged, counted in `corrupt` and skipped.
    """

    def __init__(self, stream_dir: Path, position: Position, check: bool = True) -> None:
        self.stream_dir = stream_dir
        self.position = position
        self.check = check  # inspect each closed segment opened (the raw writer; not a peek at the next reading)
        self.corrupt = 0
        self.damaged: list[SegmentCheck] = []  # closed segments found damaged when opened (taken by the caller)
        self._file: BinaryIO | None = None
        self._file_seq = -1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_path(self, seq: int) -> Path:
        return self.stream_dir / segment_name(READINGS, seq, OPEN_SUFFIX)

    def _open(self) -> bool:
        """Open the segment of the current position, or move to the next one that exists."""
        seq = self.position.seq
        files = segment_files(self.stream_dir, READINGS)
        if seq not in files:
            later = [s for s in files if s > seq]
            if not later:
                return False
            seq = min(later)
            self.position = Position(seq, 0)
        for suffix in (CLOSED_SUFFIX, OPEN_SUFFIX, CLOSED_SUFFIX):  # it may be closed while we look
            path = self.stream_dir / segment_name(READINGS, seq, suffix)
            try:
                self._file = open(path, "rb")  # noqa: SIM115
                break
            except FileNotFoundError:
                continue
        else:
            return False
        if suffix == CLOSED_SUFFIX and self.check:
            check = inspect_segment(path)
            if check is not None:
                self.damaged.append(check)
        self._file_seq = seq
        self._file.seek(self.position.offset)
        return True

    def read(self, max_records: int) -> list[Reading]:
        """Up to `max_records` readings; `position` is then after the last one."""
        return self._read(max_records, decode_reading)

    def read_json(self, max_records: int) -> list[bytes]:
        """`read`, but each record's JSON as it is stored (its checksum verified, not decoded)."""
        return self._read(max_records, unframe)

    def _read(self, max_records: int, decode: Callable[[bytes], T]) -> list[T]:
        out: list[T] = []
        while len(out) < max_records:
            if self._file is None and not self._open():
                break
            assert self._file is not None
            readline = self._file.readline
            offset = self.position.offset  # one Position per call, not per line (the writer's hot path)
            line = b""
            while len(out) < max_records:
                line = readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                try:
                    out.append(decode(line))
                except CorruptRecord as err:
                    self.corrupt += 1
                    logger.error(
                        "%s-%012d: skipped a corrupt record at byte %d: %s",
                        READINGS,
                        self._file_seq,
                        offset - len(line),
                        err,
                    )
            self.position = Position(self._file_seq, offset)
            if line.endswith(b"\n"):
                continue  # `max_records` read
            # End of what is written so far: a closed segment is finished, an open one may grow.
            self._file.seek(self.position.offset)
            if self._open_path(self._file_seq).exists():
                break
            if self._file.readline().endswith(b"\n"):  # written just before it was closed
                self._file.seek(self.position.offset)
                continue
            self.close()
            later = [s for s in segment_files(self.stream_dir, READINGS) if s > self._file_seq]
            if not later:
                self.position = Position(self._file_seq + 1, 0)
                break
            self.position = Position(min(later), 0)
        return out

    def lag_bytes(self) -> int:
        """Bytes of readings in this stream after the current position."""
        return lag_bytes(self.stream_dir, self.position)


def lag_bytes(stream_dir: Path, position: Position) -> int:
    """Bytes of readings in the stream after `position`."""
    total = 0
    for seq, path in segment_files(stream_dir, READINGS).items():
        if seq >= position.seq:
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size - (position.offset if seq == position.seq else 0)
    return max(total, 0)


def lag_seconds(stream_dir: Path, position: Position) -> float:
    """How long the first reading at or after `position` has waited since it was received (0: none)."""
    oldest = next_reading(stream_dir, position)
    return 0.0 if oldest is None else max(0.0, time.time() - oldest.received / 1000)


def next_reading(stream_dir: Path, position: Position) -> Reading | None:
    """The first reading at or after `position`, or None when there is none (yet)."""
    tail = StreamTail(stream_dir, position, check=False)
    try:
        batch = tail.read(1)
    finally:
        tail.close()
    return batch[0] if batch else None
