"""Retention of the spool: closed segments (and their metadata and damage notes) deleted once old enough.

`collect_garbage` (run by the raw writer, which knows what InfluxDB has) deletes
readings once written and, with a pipelines checkpoint, processed; `expire_rejects`
(run by the ingest process) applies the shorter reject retention. The newest
segment of each type is always kept, so sequence numbers never go back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ingest.spool import DAMAGE_SUFFIX, RECORD_TYPES, segment_files
from ingest.spooltail import Position
from sensors.files import fsync_dir
from sensors.spool import CLOSED_SUFFIX, READINGS, REJECTS, BadMetadata, meta_path, read_meta

logger = logging.getLogger(__name__)


def closed_before(stream_dir: Path, record_type: str) -> Iterator[tuple[int, Path]]:
    """Closed segments of one type, oldest first, except the newest segment of the stream."""
    files = segment_files(stream_dir, record_type)
    newest = max(files, default=0)
    for seq in sorted(files):
        if seq != newest and files[seq].suffix == CLOSED_SUFFIX:
            yield seq, files[seq]


def collect_garbage(
    stream_dir: Path,
    retention_s: float,
    written: Position,
    processed_seq: int | None = None,
    now_ms: Callable[[], int] | None = None,
) -> list[Path]:
    """Delete closed segments older than the retention; reading segments only once written to InfluxDB
    and, if the pipelines keep a checkpoint, once they processed them (`processed_seq`: the highest
    sequence number they are done with in this stream; None when there is no checkpoint).

    A reading segment is written when the writer's position is in a later
    segment. The newest segment of each type is kept, so sequence numbers never
    restart and the writer's position stays meaningful. Returns what was deleted.
    """
    if retention_s <= 0:
        return []
    now = now_ms() if now_ms else int(time.time() * 1000)
    deleted: list[Path] = []
    for record_type in RECORD_TYPES:
        for seq, path in closed_before(stream_dir, record_type):
            if record_type == READINGS and (seq >= written.seq or (processed_seq is not None and seq > processed_seq)):
                break
            try:
                info = read_meta(path)
            except (OSError, BadMetadata) as err:
                logger.warning("%s: unreadable metadata, kept: %s", path, err)
                continue
            if now - info.closed_at < retention_s * 1000:
                break
            path.unlink()
            meta_path(path).unlink(missing_ok=True)
            path.with_name(path.name + DAMAGE_SUFFIX).unlink(missing_ok=True)
            deleted.append(path)
    if deleted:
        fsync_dir(stream_dir)
        logger.info("%s: deleted %d segments past the %.0f h retention", stream_dir, len(deleted), retention_s / 3600)
    return deleted


def expire_rejects(stream_dir: Path, retention_s: float, now_ms: int | None = None) -> list[Path]:
    """Delete the stream's closed reject segments closed more than `retention_s` ago (0: keep them); the
    newest reject segment is kept, so sequence numbers never go back. Returns what was deleted."""
    if retention_s <= 0:
        return []
    now = int(time.time() * 1000) if now_ms is None else now_ms
    deleted: list[Path] = []
    for _, path in closed_before(stream_dir, REJECTS):
        try:
            closed_at = read_meta(path).closed_at
        except BadMetadata as err:
            logger.warning("%s; kept", err)
            continue
        except FileNotFoundError:
            continue
        if now - closed_at < retention_s * 1000:
            break  # closed in order: the rest are younger
        path.unlink(missing_ok=True)
        meta_path(path).unlink(missing_ok=True)
        path.with_name(path.name + DAMAGE_SUFFIX).unlink(missing_ok=True)
        deleted.append(path)
    if deleted:
        fsync_dir(stream_dir)
        logger.info("%s: deleted %d reject segments past the %.0f h reject retention", stream_dir, len(deleted),
                    retention_s / 3600)  # fmt: skip
    return deleted
