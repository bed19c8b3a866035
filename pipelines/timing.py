"""Event time: window sizes, lateness, range alignment, and stamping batches into windows.

All times in the project are UTC epoch milliseconds; Beam's are seconds
(`Timestamp`), converted only here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import BoundedWindow, TimestampedValue

from pipelines.batch import ReadingBatch

MINUTE_MS = 60_000
HOUR_MS = 3_600_000

# DoFn.process defaults that make Beam pass the element's window and pane (typed as Any for mypy).
WINDOW: Any = beam.DoFn.WindowParam
PANE: Any = beam.DoFn.PaneInfoParam


def stamped_windows(
    batch: ReadingBatch, width_s: int, offset_s: int = 0, key: Hashable | None = None
) -> Iterator[TimestampedValue]:
    """Split a batch by fixed windows of `width_s`; each part is `(key, part)` stamped with its window start.

    The key defaults to the batch's kind. A part carries one timestamp for all
    its readings, so Beam assigns it to windows once, not once per reading.
    """
    for start_ms, part in batch.windows(width_s * 1000, offset_s * 1000):
        yield TimestampedValue((batch.kind if key is None else key, part), start_ms / 1000)


def window_start_ms(window: BoundedWindow) -> int:
    return int(window.start.micros // 1000)


def window_end_ms(window: BoundedWindow) -> int:
    return int(window.end.micros // 1000)


def floor_to(ms: int, unit_ms: int) -> int:
    return ms // unit_ms * unit_ms


def ceil_to(ms: int, unit_ms: int) -> int:
    return -(-ms // unit_ms) * unit_ms
