"""How many rejections of each vendor ingest keeps on disk: a rate and a byte budget per vendor.

Every rejected message is answered on the reject topic, so the vendor always
learns why. Keeping it in the reject store is what costs: without a budget a
vendor flooding bad messages fills the disk at the broker's rate. So each
vendor (the one of the sensor the topic names, or `_unknown`) may store

- at most `per_s` rejections a second: a token bucket holding one second's worth;
- at most `max_bytes` of reject records over the retention (`retention_ms`),
  counted per hour of receipt.

A rejection over either budget is answered and acknowledged but not stored;
the caller counts it (`rejects_not_stored`), and this module logs a warning per
vendor at most every `WARNING_INTERVAL_S`. The byte counts are rebuilt at
start-up from the stream's reject segments, so a restart does not reset them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgspec

from ingest.spool import segment_files
from sensors.reading import verify_line
from sensors.spool import CLOSED_SUFFIX, REJECTS, iter_lines
from storage.schema import UNKNOWN_VENDOR

logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
WARNING_INTERVAL_S = 60.0


@dataclass
class _Vendor:
    tokens: float
    refilled: float  # clock() when tokens were last topped up
    hours: deque[list[int]] = field(default_factory=deque)  # [hour start ms, bytes stored], oldest first
    stored_bytes: int = 0  # sum over `hours`
    not_stored: int = 0  # since the last warning
    next_warning: float = 0.0


class _Vendorship(msgspec.Struct):
    """What the rebuild needs of a reject record."""

    received_at: str
    vendor: str | None = None


_decode = msgspec.json.Decoder(_Vendorship).decode


class RejectBudget:
    """`admit(vendor, size, now_ms)` says whether a rejection of `size` bytes is stored. 0 turns a limit off."""

    def __init__(
        self, per_s: float, max_bytes: int, retention_ms: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_s = per_s
        self.max_bytes = max_bytes
        self.retention_ms = retention_ms
        self.clock = clock
        self.burst = max(per_s, 1.0)
        self._vendors: dict[str, _Vendor] = {}

    def _vendor(self, vendor: str) -> _Vendor:
        state = self._vendors.get(vendor)
        if state is None:
            state = self._vendors[vendor] = _Vendor(tokens=self.burst, refilled=self.clock())
        return state

    def stored_bytes(self, vendor: str) -> int:
        return self._vendors[vendor].stored_bytes if vendor in self._vendors else 0

    def _expire(self, state: _Vendor, now_ms: int) -> None:
        if not self.retention_ms:
            return  # kept forever: the cap counts every stored rejection
        oldest = now_ms - now_ms % HOUR_MS - self.retention_ms
        while state.hours and state.hours[0][0] < oldest:
            state.stored_bytes -= state.hours.popleft()[1]

    def _add(self, state: _Vendor, size: int, now_ms: int) -> None:
        hour = now_ms - now_ms % HOUR_MS
        if state.hours and state.hours[-1][0] == hour:
            state.hours[-1][1] += size
        else:
            state.hours.append([hour, size])
        state.stored_bytes += size

    def admit(self, vendor: str | None, size: int, now_ms: int) -> bool:
        """True: store it (and count it against the budget). False: over budget, answer only."""
        name = vendor or UNKNOWN_VENDOR
        state = self._vendor(name)
        now = self.clock()
        if self.per_s:
            state.tokens = min(self.burst, state.tokens + (now - state.refilled) * self.per_s)
            state.refilled = now
        self._expire(state, now_ms)
        over_rate = bool(self.per_s) and state.tokens < 1
        over_bytes = bool(self.max_bytes) and state.stored_bytes + size > self.max_bytes
        if not (over_rate or over_bytes):
            if self.per_s:
                state.tokens -= 1
            self._add(state, size, now_ms)
            return True
        state.not_stored += 1
        if now >= state.next_warning:
            state.next_warning = now + WARNING_INTERVAL_S
            why = (
                f"{self.per_s:g} rejections/s"
                if over_rate
                else f"{self.max_bytes / 2**20:g} MiB kept over {self.retention_ms / HOUR_MS:g} h"
            )
            logger.warning(
                "vendor %s is over its reject store budget (%s): %d rejections answered on the reject topic but "
                "not stored since the last warning (counted in rejects_not_stored; next warning in %.0f s at the "
                "earliest)",
                name,
                why,
                state.not_stored,
                WARNING_INTERVAL_S,
            )
            state.not_stored = 0
        return False

    def rebuild(self, stream_dir: Path, now_ms: int | None = None) -> int:
        """Count the bytes of the stream's closed reject segments within the retention, per vendor and hour
        of receipt; returns the records counted."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        oldest = now_ms - now_ms % HOUR_MS - self.retention_ms if self.retention_ms else None
        counted = 0
        for _, path in sorted(segment_files(stream_dir, REJECTS).items()):
            if path.suffix != CLOSED_SUFFIX:
                continue
            try:
                lines = list(iter_lines(path))
            except FileNotFoundError:
                continue
            for line in lines:
                if not verify_line(line):
                    continue
                try:
                    record = _decode(line[9:-1])
                    received = int(datetime.fromisoformat(record.received_at).timestamp() * 1000)
                except (msgspec.DecodeError, ValueError):
                    continue
                if oldest is not None and received < oldest:
                    continue
                state = self._vendor(record.vendor or UNKNOWN_VENDOR)
                hour = received - received % HOUR_MS
                # Segments are in order of receipt, so each hour is appended after the earlier ones.
                if state.hours and state.hours[-1][0] >= hour:
                    state.hours[-1][1] += len(line)
                    state.stored_bytes += len(line)
                else:
                    self._add(state, len(line), received)
                counted += 1
        return counted
