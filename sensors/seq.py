"""Gaps in a sensor's message counter `seq` (the payload contract's optional sequence number).

A sensor numbers its readings 0, 1, 2, ... Taken in `ts` order, every number
skipped between two of its readings is a reading that did not arrive: lost in a
gateway or the broker, or rejected by ingest. A number that does not go up (back
to 0, or any step down) is a restart of the counter, not a gap; the same number
again is a duplicate. Readings without a `seq` are left out: they neither open
nor close a gap. Sensor health (`pipelines.sensor_health`, per hour) and the
production audit (`deploy.production_audit`, over its window) count by this rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def missing_ranges(seqs: Iterable[int | None]) -> Iterator[tuple[int, int]]:
    """The skipped numbers as half-open ranges [first, end), for `seqs` in `ts` order."""
    previous: int | None = None
    for seq in seqs:
        if seq is None:
            continue
        if previous is not None and seq > previous + 1:
            yield previous + 1, seq
        previous = seq


def gaps(seqs: Iterable[int | None]) -> int:
    """How many numbers are skipped in `seqs` (in `ts` order)."""
    return sum(end - first for first, end in missing_ranges(seqs))
