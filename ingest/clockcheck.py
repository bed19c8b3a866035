"""Whether this host's clock, rather than the vendors', is off: vendors whose readings are all rejected
for their `ts`, at about one offset.

Every reading of several vendors rejected as `ts_in_future` at about the same offset most likely
means that ingest's own clock runs behind (a host without time sync after a power cut);
`ts_too_old` for all of them, that it runs ahead. A vendor's own clock bug touches some of its
sensors, not all of them, so a vendor counts only when nearly all its messages are such rejections.
Sensors with unset or garbage clocks agree too, on times like 1970, 2000 or 2100; a host's clock
error shows as sensors sending the present, so readings dated outside `PRESENT` do not count.
The contract must still reject them (it cannot tell which clock is right) and the reject notices ask
vendors to check their sensors' clocks, so the operator is told, in ingest's log:

    check = ClockCheck(messages_by_vendor)                     # cumulative messages per vendor
    warning = check.observe(vendor, offset_ms, received_ms)   # per ts rejection; a line to log, or None
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable, Mapping

EVALUATE_EVERY_MS = 10_000  # the rejections since the last look are weighed at most this often
MIN_VENDORS = 3  # independent vendors ...
MIN_REJECTED = 5  # ... each with this many ts rejections since the last look ...
MIN_SHARE = 0.9  # ... making this share of its messages ...
AGREE_MS = 5 * 60_000  # ... at offsets within this of their common median
KEPT_PER_VENDOR = 1_000  # offsets kept per vendor between looks (a flood must not grow memory)
REPEAT_MS = 10 * 60_000  # the warning again at most this often while it lasts
PRESENT = range(1_577_836_800_000, 4_102_444_800_000)  # [2020, 2100) UTC: outside, an unset or garbage clock
HOUR_MS = 3_600_000


class ClockCheck:
    def __init__(self, messages_by_vendor: Callable[[], Mapping[str, int]]) -> None:
        self._messages_by_vendor = messages_by_vendor
        self._messages_then = dict(messages_by_vendor())
        self._offsets: dict[str, list[int]] = collections.defaultdict(list)
        self._rejected: collections.Counter[str] = collections.Counter()
        self._next_look_ms = 0
        self._quiet_until_ms = 0

    def observe(self, vendor: str, offset_ms: int, received_ms: int) -> str | None:
        """Record a ts rejection (the reading's ts minus the time it was received); the warning to log when
        independent vendors now agree on an offset for nearly all their messages, else None."""
        self._rejected[vendor] += 1
        offsets = self._offsets[vendor]
        if len(offsets) < KEPT_PER_VENDOR:
            offsets.append(offset_ms)
        if received_ms < self._next_look_ms:
            return None
        self._next_look_ms = received_ms + EVALUATE_EVERY_MS
        messages_now = dict(self._messages_by_vendor())
        medians = {
            v: statistics.median_low(self._offsets[v])
            for v, rejected in self._rejected.items()
            if rejected >= MIN_REJECTED
            and rejected >= MIN_SHARE * (messages_now.get(v, 0) - self._messages_then.get(v, 0))
        }
        medians = {v: offset for v, offset in medians.items() if received_ms + offset in PRESENT}
        self._messages_then = messages_now
        self._offsets.clear()
        self._rejected.clear()
        if len(medians) < MIN_VENDORS or received_ms < self._quiet_until_ms:
            return None
        median = statistics.median_low(medians.values())
        vendors = sorted(v for v, offset in medians.items() if abs(offset - median) <= AGREE_MS)
        if len(vendors) < MIN_VENDORS:
            return None
        self._quiet_until_ms = received_ms + REPEAT_MS
        code, side, host = ("ts_in_future", "ahead of", "behind") if median > 0 else ("ts_too_old", "behind", "ahead")
        named = ", ".join(vendors[:5]) + (f" and {len(vendors) - 5} more" if len(vendors) > 5 else "")
        whole_hours = min(abs(median) % HOUR_MS, HOUR_MS - abs(median) % HOUR_MS) < 60_000
        local_time = "; whole hours are also what sensors sending local time as UTC look like" if whole_hours else ""
        return (
            f"every reading of {len(vendors)} vendors ({named}) is rejected as {code}, about {_duration(median)} "
            f"{side} this host's clock; independent vendors agreeing points at this host's clock running {host}: "
            f"check its time sync (timedatectl, chrony){local_time}"
        )


def _duration(offset_ms: int) -> str:
    ms = abs(offset_ms)
    if ms >= HOUR_MS:
        return f"{ms / HOUR_MS:.1f} h"
    if ms >= 60_000:
        return f"{ms / 60_000:.0f} min"
    return f"{ms / 1000:.0f} s"
