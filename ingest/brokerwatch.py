"""Loss the broker causes, made visible without the simulator's manifests.

Mosquitto drops messages silently: a session queue past `max_queued_messages`
(while ingest is away or behind), or the queued messages of a session restored
from an older autosave after a crash. It says so only in `$SYS`, which it
publishes every `sys_interval` (10 s by default; 0 turns `$SYS` off):

- `$SYS/broker/publish/messages/dropped`: messages dropped since the broker
  started (every client's queues, not only ingest's);
- `$SYS/broker/uptime`: "N seconds", which dates the broker's start.

`BrokerWatch` turns them into the `ingest` counters `broker_dropped` (how much
the dropped counter went up) and `session_restored` (a reconnect with a
session present to a broker that restarted meanwhile: the session came from
its persistence file, so messages queued after its last save may be gone),
each with a warning in the log. It keeps the last counter and the broker's
start in a small state file, so a restart of ingest neither counts drops twice
nor misses a broker restart that happened while it was away.

A retained `$SYS` message may be up to `sys_interval` old, so the restart
check waits for the first live uptime message of each connection (exact to a
second); drop counts seen before it are held until then, because a restarted
broker's counter starts again from 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

from ingest.metrics import Metrics
from sensors.files import write_json_atomic

logger = logging.getLogger(__name__)

SYS_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
SYS_UPTIME_TOPIC = "$SYS/broker/uptime"
WATCH_TOPICS = (SYS_DROPPED_TOPIC, SYS_UPTIME_TOPIC)
STATE_FILE = "broker-watch.json"
# Two live uptime messages of one broker date its start within a second or two (whole seconds, delivery).
RESTART_SLACK_S = 3.0


class BrokerWatch:
    """Reads the broker's `$SYS` counters for one ingest process; `connected()` on every CONNACK,
    `on_message()` for each `$SYS` message (paho's network thread calls both)."""

    def __init__(self, state_path: Path, metrics: Metrics, client_id: str) -> None:
        self.state_path = state_path
        self.metrics = metrics
        self.client_id = client_id
        state = self._load()
        self.started_at: float | None = state.get("started_at")  # epoch s of the broker's start, estimated
        dropped = state.get("dropped")
        self.dropped: int | None = None if dropped is None else int(dropped)  # the broker's counter, last seen
        self._started_mono: float | None = None  # the same on the monotonic clock, once seen by this process
        self._session_present = False
        self._checked = True  # the restart check of the current connection is done
        self._held_dropped: int | None = None

    def connected(self, session_present: bool) -> None:
        self._session_present = session_present
        self._checked = False

    def on_message(self, topic: str, payload: bytes | bytearray, retained: bool) -> None:
        try:
            value = int(payload.split()[0])
        except (ValueError, IndexError):
            return
        if topic == SYS_UPTIME_TOPIC and not retained:
            self._on_uptime(value)
        elif topic == SYS_DROPPED_TOPIC:
            if self._checked:
                self._on_dropped(value)
            else:
                self._held_dropped = value

    def _on_uptime(self, uptime_s: int) -> None:
        started = time.time() - uptime_s
        started_mono = time.monotonic() - uptime_s
        if self._started_mono is not None:  # immune to steps of the wall clock
            restarted = started_mono > self._started_mono + RESTART_SLACK_S
        else:  # the first in this process: against the start a previous run saw
            restarted = self.started_at is not None and started > self.started_at + RESTART_SLACK_S
        if restarted:
            self.dropped = 0  # a new broker process counts from 0
            logger.warning("the broker restarted (up for %d s)", uptime_s)
            if not self._checked and self._session_present:
                self.metrics.session_restored += 1
                logger.warning(
                    "the restarted broker restored the session of %s from its persistence file: messages it "
                    "queued for ingest after its last save before the restart may be lost (a crash before "
                    "its autosave); the broker does not say how many",
                    self.client_id,
                )
        if restarted or self._started_mono is None:
            self.started_at, self._started_mono = started, started_mono
        else:
            self._started_mono = min(self._started_mono, started_mono)
        if not self._checked:
            self._checked = True
            if self._held_dropped is not None:
                self._on_dropped(self._held_dropped)
                self._held_dropped = None
        self._save()

    def _on_dropped(self, value: int) -> None:
        previous = self.dropped
        # No earlier figure: every drop since this broker started is news. A lower one: a restart not yet seen.
        new = value if previous is None or value < previous else value - previous
        self.dropped = value
        if new:
            self.metrics.broker_dropped += new
            logger.warning(
                "the broker dropped %d messages (%s = %d): a session queue was full, e.g. ingest's while it "
                "was away or behind; those messages are lost",
                new,
                SYS_DROPPED_TOPIC,
                value,
            )
        self._save()

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            return {key: float(data[key]) for key in ("started_at", "dropped") if data.get(key) is not None}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as err:
            logger.warning("%s is unreadable (%s); starting the broker watch afresh", self.state_path, err)
            return {}

    def _save(self) -> None:
        with contextlib.suppress(OSError):  # the state only avoids double counts after a restart of ingest
            write_json_atomic(self.state_path, {"started_at": self.started_at, "dropped": self.dropped})
