"""Layout of the spool on disk, shared by ingest (which writes it) and pipelines (which read it).

    {spool root}/{stream}/                   one folder per ingest process (its stable client id)
        readings-000000000042.open           the segment being appended; only ingest touches it
        readings-000000000041.seg            a closed segment: complete, verified, immutable
        readings-000000000041.seg.meta.json  what is in it (count, bytes, CRC-32, event-time range, kinds)
        rejects-000000000007.seg             rejected messages, same framing (`Rejection` records)

Each line is a checksummed record of `sensors.reading`. A segment is closed by
writing its metadata (atomically) and then renaming `.open` to `.seg`; readers
only ever see closed segments whose metadata exists, so they never read a
segment that is still growing. Closed segments are the input of the Beam
pipelines and can be moved to object storage as they are.

A closed segment can still be damaged afterwards (a cut copy, a disk fault):
`check_segment` compares it with its metadata (size, CRC-32, record count) and
says how many records are lost. Readers skip what does not verify and report
it (`skipped`), never abort: unreadable metadata skips that one segment.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sensors.errors import SmartcityError
from sensors.files import write_json_atomic
from sensors.reading import CorruptRecord, Reading, Rejection, decode_reading, decode_rejection, verify_line

logger = logging.getLogger(__name__)

READINGS = "readings"
REJECTS = "rejects"
OPEN_SUFFIX = ".open"
CLOSED_SUFFIX = ".seg"
META_SUFFIX = ".seg.meta.json"

_SEGMENT = re.compile(r"^(readings|rejects)-(\d{12})\.seg$")


def segment_name(record_type: str, seq: int, suffix: str) -> str:
    """File name of segment `seq` of a stream (`readings` or `rejects`)."""
    return f"{record_type}-{seq:012d}{suffix}"


@dataclass(frozen=True)
class SegmentInfo:
    """Metadata of a closed segment, written next to it when it is closed."""

    stream: str
    record_type: str
    seq: int
    count: int
    bytes: int
    min_ts: int | None  # event time (reading ts, epoch ms); None for an empty or a reject segment
    max_ts: int | None
    closed_at: int  # epoch ms
    kinds: dict[str, int] = field(default_factory=dict)
    crc32: int | None = None  # of the whole file; None in metadata written before it was recorded
    path: Path = field(default=Path(), compare=False)

    def overlaps(self, start_ms: int | None, end_ms: int | None) -> bool:
        """True if readings in [start_ms, end_ms) may be in this segment."""
        if self.min_ts is None or self.max_ts is None:
            return self.count > 0 and self.record_type == REJECTS
        return (start_ms is None or self.max_ts >= start_ms) and (end_ms is None or self.min_ts < end_ms)


def meta_path(segment: Path) -> Path:
    return segment.with_name(segment.name[: -len(CLOSED_SUFFIX)] + META_SUFFIX)


def write_meta(info: SegmentInfo, segment: Path) -> None:
    """Write the metadata of `segment` atomically (temp file, fsync, rename)."""
    write_json_atomic(meta_path(segment), {k: v for k, v in asdict(info).items() if k != "path"})


class BadMetadata(SmartcityError):
    """A segment's `.meta.json` cannot be read (truncated, not JSON, wrong fields); the message names it."""


def read_meta(segment: Path) -> SegmentInfo:
    """The metadata of a closed segment; `BadMetadata` (one line) if it is unreadable."""
    path = meta_path(segment)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SegmentInfo(**data, path=segment)
    except OSError as err:
        raise BadMetadata(f"{path}: unreadable segment metadata ({err.strerror or err})") from None
    except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadMetadata(f"{path}: unreadable segment metadata ({str(err).splitlines()[0]})") from None


def closed_segments(
    root: Path,
    record_type: str = READINGS,
    start_ms: int | None = None,
    end_ms: int | None = None,
    skipped: list[str] | None = None,
) -> list[SegmentInfo]:
    """Closed segments of every stream under `root` that may hold readings in [start_ms, end_ms).

    Ordered by stream, then sequence number (the order they were written in).
    A segment whose metadata is unreadable is left out with a warning, and the
    reason appended to `skipped`.
    """
    found: list[SegmentInfo] = []
    if not root.is_dir():
        return found
    for stream_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for segment in sorted(stream_dir.glob(f"{record_type}-*{CLOSED_SUFFIX}")):
            if not _SEGMENT.match(segment.name) or not meta_path(segment).exists():
                continue
            try:
                info = read_meta(segment)
            except BadMetadata as err:
                _skip(skipped, f"{err}; segment skipped")
                continue
            if info.overlaps(start_ms, end_ms):
                found.append(info)
    return found


_warned: set[str] = set()  # reasons logged already: `pipeline run --follow` lists the spool every few seconds


def _skip(skipped: list[str] | None, reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("%s", reason)
    if skipped is not None:
        skipped.append(reason)


@dataclass(frozen=True)
class SegmentCheck:
    """A closed segment compared with its metadata."""

    info: SegmentInfo
    size: int  # bytes on disk
    crc32: int
    intact: int  # lines that verify

    @property
    def lost(self) -> int:
        """Records the metadata lists that no longer verify (cut off or corrupt)."""
        return max(self.info.count - self.intact, 0)

    @property
    def damaged(self) -> bool:
        crc_differs = self.info.crc32 is not None and self.crc32 != self.info.crc32
        return self.lost > 0 or self.size != self.info.bytes or crc_differs

    def describe(self) -> str:
        """One line for the log: what is wrong and how many records it costs."""
        crc = "" if self.info.crc32 is None else f", CRC-32 {self.crc32:08x} (metadata {self.info.crc32:08x})"
        return (
            f"{self.info.path}: damaged closed segment: {self.lost} of its {self.info.count} records lost, "
            f"{self.intact} intact ({self.size} bytes, metadata {self.info.bytes}{crc})"
        )


def check_segment(info: SegmentInfo) -> SegmentCheck:
    """Read a closed segment and compare it with its metadata (size, CRC-32, verified records)."""
    data = info.path.read_bytes()
    crc = zlib.crc32(data)
    if len(data) == info.bytes and crc == info.crc32:
        intact = info.count  # the same bytes: no need to verify each line
    else:
        intact = sum(1 for line in data.splitlines(keepends=True) if verify_line(line))
    return SegmentCheck(info, len(data), crc, intact)


def iter_lines(segment: Path) -> Iterator[bytes]:
    with open(segment, "rb") as handle:
        yield from handle


def read_readings(segment: Path) -> Iterator[Reading]:
    """Every reading of a closed segment; a line that does not verify raises `CorruptRecord`."""
    for number, line in enumerate(iter_lines(segment), start=1):
        try:
            yield decode_reading(line)
        except CorruptRecord as err:
            raise CorruptRecord(f"{segment}:{number}: {err}") from None


def read_rejections(segment: Path, skipped: list[str] | None = None) -> Iterator[Rejection]:
    """Every rejection of a segment; a line that does not verify is skipped, logged and listed in `skipped`."""
    for number, line in enumerate(iter_lines(segment), start=1):
        try:
            yield decode_rejection(line)
        except CorruptRecord as err:
            _skip(skipped, f"{segment}:{number}: skipped a record that does not verify ({err})")
