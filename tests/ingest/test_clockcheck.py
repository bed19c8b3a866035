"""ingest.clockcheck: this host's clock blamed only when independent vendors have nearly every reading
rejected for its ts, at about one offset."""

from __future__ import annotations

import collections

from ingest.clockcheck import EVALUATE_EVERY_MS, REPEAT_MS, ClockCheck

HOUR_MS = 3_600_000
T0 = 1_796_000_000_000


class Ingest:
    """The messages a consumer counted per vendor, and its clock check."""

    def __init__(self) -> None:
        self.messages: collections.Counter[str] = collections.Counter()
        self.check = ClockCheck(lambda: self.messages)
        self.now = T0

    def feed(self, offsets: dict[str, int], seconds: float, per_s: int = 20, good_share: float = 0.0) -> list[str]:
        """`per_s` messages a second per vendor for `seconds`; a `good_share` of them accepted, the rest
        rejected at the vendor's offset. The warnings returned."""
        warnings = []
        step = 1000 // per_s
        for n in range(int(seconds * per_s)):
            self.now += step
            for vendor, offset in offsets.items():
                self.messages[vendor] += 1
                if (n * 7919 % 1000) / 1000 < good_share:
                    continue
                if (warning := self.check.observe(vendor, offset, self.now)) is not None:
                    warnings.append(warning)
        return warnings


def test_three_vendors_two_hours_ahead_blame_this_hosts_clock_once() -> None:
    ingest = Ingest()
    offsets = {"a": 2 * HOUR_MS + 120_000, "b": 2 * HOUR_MS + 160_000, "c": 2 * HOUR_MS + 117_000}
    warnings = ingest.feed(offsets, seconds=60)
    assert len(warnings) == 1
    assert "every reading of 3 vendors (a, b, c) is rejected as ts_in_future, about 2.0 h ahead of" in warnings[0]
    assert "this host's clock running behind" in warnings[0] and "local time" not in warnings[0]
    ingest.now += REPEAT_MS  # said again once REPEAT_MS passed, while it lasts
    assert len(ingest.feed(offsets, seconds=30)) == 1


def test_a_host_clock_ahead_shows_as_every_vendor_too_old() -> None:
    warnings = Ingest().feed({v: -4 * 24 * HOUR_MS for v in "abcdefg"}, seconds=30)
    assert len(warnings) == 1
    assert (
        "every reading of 7 vendors (a, b, c, d, e and 2 more) is rejected as ts_too_old, about 96.0 h" in (warnings[0])
    )
    assert "running ahead" in warnings[0]


def test_whole_hours_also_name_local_time_sent_as_utc() -> None:
    [warning] = Ingest().feed({v: 7 * HOUR_MS for v in "abc"}, seconds=30)
    assert "about 7.0 h ahead" in warning and "sensors sending local time as UTC" in warning


def test_vendors_clock_bugs_are_not_this_hosts_clock() -> None:
    # Many vendors with some sensors sending Thai time as UTC (7 h ahead): most of their readings pass.
    assert Ingest().feed({v: 7 * HOUR_MS for v in "abcdefg"}, seconds=120, good_share=0.5) == []
    # Two vendors are not independent enough; three that disagree are three clock bugs.
    assert Ingest().feed({"a": 2 * HOUR_MS, "b": 2 * HOUR_MS}, seconds=60) == []
    assert Ingest().feed({"a": 2 * HOUR_MS, "b": 5 * HOUR_MS, "c": -30 * 24 * HOUR_MS}, seconds=60) == []


def test_sensors_with_unset_clocks_agree_but_do_not_blame_this_host() -> None:
    # Every vendor sending ts 0 (1970) agrees to the millisecond; a host is not decades ahead.
    assert Ingest().feed({v: -T0 for v in "abcd"}, seconds=60) == []
    assert Ingest().feed({v: 946_684_800_000 - T0 for v in "abcd"}, seconds=60) == []  # 2000-01-01
    assert Ingest().feed({v: 4_102_444_800_000 - T0 for v in "abcd"}, seconds=60) == []  # 2100-01-01


def test_a_flood_is_weighed_every_ten_seconds() -> None:
    ingest = Ingest()
    calls = 0

    def counted() -> collections.Counter[str]:
        nonlocal calls
        calls += 1
        return ingest.messages

    ingest.check = ClockCheck(counted)
    ingest.feed({v: HOUR_MS for v in "abc"}, seconds=EVALUATE_EVERY_MS * 3 / 1000, per_s=1000)  # 90,000 rejections
    assert calls == 1 + 3  # at the start, then once every EVALUATE_EVERY_MS
