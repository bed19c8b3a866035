"""What `pipeline run --follow` has done, kept durably in `{home}/pipelines/checkpoint.json`.

The pipelines write it; ingest reads it before deleting old spool segments (a segment the pipelines
have not processed is kept). Both use this one module, so the format has one owner.

    {"streams": {"ingest-1": 42}, "watermark_ms": 1764032400000, "hours_done_ms": 1764032400000}

- `streams`: per spool stream, the highest closed segment sequence number
  whose readings are in InfluxDB (segments of a stream close in order);
- `watermark_ms`: the latest event time seen; readings whose window ended more
  than the allowed lateness before it no longer re-aggregate their windows;
- `hours_done_ms`: the clock hour up to which sensor health was written, so an
  hour without any data still gets its (all-silent) health points.

The file is replaced atomically (temp file, fsync, rename) only after a
cycle's points were acknowledged, so a crash repeats at most one cycle, and a
repeated cycle rewrites the same points.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sensors.errors import SmartcityError
from sensors.files import write_json_atomic
from sensors.spool import SegmentInfo


class CheckpointError(SmartcityError):
    """The checkpoint file exists but cannot be read; the message names it."""


@dataclass
class Checkpoint:
    streams: dict[str, int] = field(default_factory=dict)
    watermark_ms: int | None = None
    hours_done_ms: int | None = None

    def is_done(self, segment: SegmentInfo) -> bool:
        return segment.seq <= self.streams.get(segment.stream, -1)

    def mark_done(self, segments: list[SegmentInfo]) -> None:
        for s in segments:
            self.streams[s.stream] = max(s.seq, self.streams.get(s.stream, -1))
            if s.max_ts is not None:
                self.watermark_ms = max(s.max_ts, self.watermark_ms or s.max_ts)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read the pipeline checkpoint: {err}") from None
        try:
            return cls(
                streams={str(k): int(v) for k, v in data.get("streams", {}).items()},
                watermark_ms=data.get("watermark_ms"),
                hours_done_ms=data.get("hours_done_ms"),
            )
        except (AttributeError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: not a pipeline checkpoint: {err}") from None

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))
