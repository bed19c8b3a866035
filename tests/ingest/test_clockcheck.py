"""ingest.clockcheck: this host's clock blamed only when independent vendors agree on one offset."""

from __future__ import annotations

from ingest.clockcheck import EVALUATE_EVERY_MS, REPEAT_MS, ClockCheck

HOUR_MS = 3_600_000
T0 = 1_796_000_000_000


def feed(check: ClockCheck, offsets: dict[str, int], count: int, start_ms: int = T0) -> list[str]:
    """`count` ts rejections per vendor, interleaved, 10 ms apart; the warnings returned."""
    warnings = []
    at = start_ms
    for _ in range(count):
        for vendor, offset in offsets.items():
            at += 10
            if (warning := check.observe(vendor, offset, at)) is not None:
                warnings.append(warning)
    return warnings


def test_three_vendors_two_hours_ahead_blame_this_hosts_clock_once() -> None:
    check = ClockCheck()
    warnings = feed(check, {"a": 2 * HOUR_MS, "b": 2 * HOUR_MS + 40_000, "c": 2 * HOUR_MS - 3_000}, 200)
    assert len(warnings) == 1
    assert "readings of 3 vendors (a, b, c) are rejected as ts_in_future, about 2.0 h ahead of" in warnings[0]
    assert "this host's clock running behind" in warnings[0]
    # Said again once REPEAT_MS passed, while it lasts.
    assert len(feed(check, {"a": 2 * HOUR_MS, "b": 2 * HOUR_MS, "c": 2 * HOUR_MS}, 150, T0 + REPEAT_MS + 5_000)) == 1


def test_a_host_clock_ahead_shows_as_every_vendor_too_old() -> None:
    warnings = feed(ClockCheck(), {v: -4 * 24 * HOUR_MS for v in "abcdefg"}, 20)
    assert len(warnings) == 1
    assert (
        "readings of 7 vendors (a, b, c, d, e and 2 more) are rejected as ts_too_old, about 96.0 h behind"
        in (warnings[0])
    )
    assert "running ahead" in warnings[0]


def test_two_vendors_or_vendors_that_disagree_are_the_vendors_clocks() -> None:
    assert feed(ClockCheck(), {"a": 2 * HOUR_MS, "b": 2 * HOUR_MS}, 500) == []
    assert feed(ClockCheck(), {"a": 2 * HOUR_MS, "b": 5 * HOUR_MS, "c": -30 * 24 * HOUR_MS}, 500) == []
    # A third vendor with too few rejections in the last minute does not make three.
    check = ClockCheck()
    assert feed(check, {"a": HOUR_MS, "b": HOUR_MS}, 300) == []
    assert feed(check, {"c": HOUR_MS}, 4, T0 + 10_000) == []


def test_a_flood_is_looked_at_once_a_second() -> None:
    check = ClockCheck()
    for at in range(T0, T0 + 500):  # 500 rejections of two vendors in half a second: one look, at the first
        assert check.observe("a" if at % 2 else "b", HOUR_MS, at) is None
    # Three vendors agree from the fifth of "c", but the next look is due a second after the first.
    assert [check.observe("c", HOUR_MS, T0 + 500 + i) for i in range(10)] == [None] * 10
    assert check.observe("c", HOUR_MS, T0 + EVALUATE_EVERY_MS) is not None
