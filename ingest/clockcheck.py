"""Whether this host's clock, rather than the vendors', is off: ts rejections that independent vendors agree on.

The readings of every vendor rejected as `ts_in_future` by about the same offset most likely mean
that ingest's own clock runs behind (a host without time sync after a power cut); `ts_too_old` for
all of them, that it runs ahead. The contract must still reject them (it cannot tell which clock is
right) and the reject notices ask vendors to check their sensors' clocks, so the operator is told,
in ingest's log, what the vendors cannot see:

    check = ClockCheck()
    warning = check.observe(vendor, offset_ms, received_ms)   # per ts rejection; a line to log, or None
"""

from __future__ import annotations

import collections
import statistics

WINDOW_MS = 60_000  # the rejections looked at: those of the last minute ...
MAX_KEPT = 10_000  # ... at most (under a flood every rejection is one, and the newest say enough)
EVALUATE_EVERY_MS = 1_000  # a flood must not cost a median per message
MIN_VENDORS = 3  # independent vendors that agree ...
MIN_PER_VENDOR = 5  # ... each with this many rejections in the window ...
AGREE_MS = 5 * 60_000  # ... within this of the median offset
REPEAT_MS = 10 * 60_000  # the warning again at most this often while it lasts


class ClockCheck:
    def __init__(self) -> None:
        self._recent: collections.deque[tuple[int, str, int]] = collections.deque(maxlen=MAX_KEPT)
        self._next_evaluation_ms = 0
        self._quiet_until_ms = 0

    def observe(self, vendor: str, offset_ms: int, received_ms: int) -> str | None:
        """Record a ts rejection (the reading's ts minus the time it was received); the warning to log when
        independent vendors now agree on an offset, else None."""
        recent = self._recent
        recent.append((received_ms, vendor, offset_ms))
        if received_ms < max(self._next_evaluation_ms, self._quiet_until_ms):
            return None
        self._next_evaluation_ms = received_ms + EVALUATE_EVERY_MS
        while recent and recent[0][0] < received_ms - WINDOW_MS:
            recent.popleft()
        median = statistics.median_low(offset for _, _, offset in recent)
        agreeing = collections.Counter(v for _, v, offset in recent if abs(offset - median) <= AGREE_MS)
        vendors = sorted(v for v, n in agreeing.items() if n >= MIN_PER_VENDOR)
        if len(vendors) < MIN_VENDORS:
            return None
        self._quiet_until_ms = received_ms + REPEAT_MS
        code, side, host = ("ts_in_future", "ahead of", "behind") if median > 0 else ("ts_too_old", "behind", "ahead")
        named = ", ".join(vendors[:5]) + (f" and {len(vendors) - 5} more" if len(vendors) > 5 else "")
        return (
            f"readings of {len(vendors)} vendors ({named}) are rejected as {code}, about {_duration(median)} "
            f"{side} this host's clock; independent vendors agreeing points at this host's clock running {host}: "
            "check its time sync (timedatectl, chrony)"
        )


def _duration(offset_ms: int) -> str:
    ms = abs(offset_ms)
    if ms >= 3_600_000:
        return f"{ms / 3_600_000:.1f} h"
    if ms >= 60_000:
        return f"{ms / 60_000:.0f} min"
    return f"{ms / 1000:.0f} s"
