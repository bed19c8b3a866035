"""BrokerWatch's arithmetic on `$SYS` figures (the real broker is in test_visibility_it.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest import brokerwatch
from ingest.brokerwatch import STATE_FILE, SYS_DROPPED_TOPIC, SYS_UPTIME_TOPIC, BrokerWatch
from ingest.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.wall_step = 0.0  # how far the wall clock was stepped (NTP)

    def wall(self) -> float:
        return self.now + self.wall_step

    def mono(self) -> float:
        return self.now - 1_700_000_000.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(brokerwatch.time, "time", clock.wall)
    monkeypatch.setattr(brokerwatch.time, "monotonic", clock.mono)
    return clock


def connect(watch: BrokerWatch, session_present: bool, uptime_s: int, dropped: int) -> None:
    """A CONNACK, the retained `$SYS` figures (dropped held back, uptime possibly stale), then a live uptime."""
    watch.connected(session_present)
    watch.on_message(SYS_DROPPED_TOPIC, str(dropped).encode(), retained=True)
    watch.on_message(SYS_UPTIME_TOPIC, f"{uptime_s - 9} seconds".encode(), retained=True)
    watch.on_message(SYS_UPTIME_TOPIC, f"{uptime_s} seconds".encode(), retained=False)


def test_drops_are_counted_once_across_reconnects_restarts_of_ingest_and_of_the_broker(
    tmp_path: Path, clock: Clock
) -> None:
    metrics = Metrics()
    state = tmp_path / STATE_FILE
    watch = BrokerWatch(state, metrics, "ingest")
    connect(watch, session_present=True, uptime_s=3600, dropped=40)
    assert metrics.broker_dropped == 40  # every drop since the broker started is news to a first run
    watch.on_message(SYS_DROPPED_TOPIC, b"70", retained=False)
    assert metrics.broker_dropped == 70
    clock.now += 60
    connect(watch, session_present=True, uptime_s=3660, dropped=100)  # a reconnect to the same broker
    assert (metrics.broker_dropped, metrics.session_restored) == (100, 0)
    # Ingest restarts: the state file carries the figure over.
    clock.now += 100.0
    metrics = Metrics()
    watch = BrokerWatch(state, metrics, "ingest")
    connect(watch, session_present=True, uptime_s=3760, dropped=130)
    assert (metrics.broker_dropped, metrics.session_restored) == (30, 0)
    # The broker restarts from its persistence file while ingest is away; its counter starts from 0 and has
    # already passed the old figure (it is more than the increase since).
    clock.now += 600.0
    metrics = Metrics()
    watch = BrokerWatch(state, metrics, "ingest")
    connect(watch, session_present=True, uptime_s=120, dropped=500)
    assert (metrics.broker_dropped, metrics.session_restored) == (500, 1)
    # A reconnect with no session to a restarted broker is not a restored session (the consumer counts it).
    clock.now += 60.0
    connect(watch, session_present=False, uptime_s=5, dropped=0)
    assert (metrics.broker_dropped, metrics.session_restored) == (500, 1)


def test_a_wall_clock_step_is_not_a_broker_restart(tmp_path: Path, clock: Clock) -> None:
    metrics = Metrics()
    watch = BrokerWatch(tmp_path / STATE_FILE, metrics, "ingest")
    connect(watch, session_present=True, uptime_s=3600, dropped=10)
    clock.now += 60
    clock.wall_step = 3600  # NTP steps the wall clock an hour ahead
    connect(watch, session_present=True, uptime_s=3660, dropped=10)
    assert (metrics.broker_dropped, metrics.session_restored) == (10, 0)
