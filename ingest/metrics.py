"""The service's own figures, written to the `ingest` measurement every `metrics_interval_s`,
and per vendor to `ingest_vendors` and `ingest_rejects`.

Counters are plain integers, each incremented by one thread only (the MQTT
loop, the committer or the raw writer); the reporter reads them and writes the
difference since its previous report, so a field like `received` is "messages
received in this interval" and `SUM()` over any range is exact. Gauges
(`spool_bytes`, `spool_lag`, ...) are the value at report time. A message
counts for the vendor of the sensor its topic names, or `_unknown`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sensors.outcome import Accepted, RejectCode, Rejected
from sensors.spool import SegmentCheck
from storage.line_protocol import FieldValue, Point, Precision
from storage.schema import UNKNOWN_VENDOR, ingest_point, ingest_reject_point, ingest_vendor_point

logger = logging.getLogger(__name__)

# Reports kept while InfluxDB is unreachable (one hour at the default interval); older ones are dropped.
BACKLOG_REPORTS = 360
# The outcome of an accepted message in `Metrics.by_vendor` (the others are reject codes).
ACCEPTED = "accepted"
MAX_BACKOFF_INTERVALS = 32
# The fields the raw writer moves. When it runs in a child process of `smartcity ingest`, parent and
# child report under the same instance, the parent every field but these, the child these and the
# spool integrity counters (both check segments; a damaged one is noted, so counted once). The writer's
# lag (`spool_lag`, `spool_lag_s`) is the parent's: measured from the child's saved position, it still
# grows, and alerts, when the child is dead, crash-looping or hung, and so reports nothing itself.
WRITER_FIELDS = frozenset(
    {
        "write_points", "write_batches", "write_batch_points_mean", "write_retries", "dead_letters",
        "corrupt_records", "write_latency_ms_mean", "write_latency_ms_max",
    }
)  # fmt: skip
INTEGRITY_FIELDS = frozenset({"spool_damaged_segments", "spool_lost_records"})


def consumer_field(name: str) -> bool:
    return name not in WRITER_FIELDS


def writer_field(name: str) -> bool:
    return name in WRITER_FIELDS or name in INTEGRITY_FIELDS


def status_line(fields: dict[str, Any], interval_s: float) -> str:
    """A report as the status line of `smartcity ingest`: each process shows its own loops (a role all
    process and its raw writer child print a line each)."""

    def rate(name: str) -> str:
        return f"{float(fields.get(name, 0)) / interval_s:,.0f}/s"

    parts = []
    if "received" in fields:
        parts.append(f"received {rate('received')}, accepted {rate('accepted')}, rejected {rate('rejected')}")
    if "write_points" in fields:
        parts.append(f"written {rate('write_points')}")
    if "spool_bytes" in fields:
        parts.append(f"spool {float(fields['spool_bytes']) / 2**20:,.1f} MiB")
    if "spool_lag_s" in fields:
        parts.append(f"writer lag {float(fields['spool_lag_s']):.1f} s")
    return "; ".join(parts)


class PointSink(Protocol):
    """Where points go: `storage.writer.Writer` (confirmed writes; raises `StorageWriteError`)."""

    def write(self, points: Iterable[Point]) -> Any: ...

    def close(self) -> None: ...


class LineSink(PointSink, Protocol):
    """A `PointSink` that also takes encoded lines (the raw writer's): `storage.writer.Writer`."""

    def write_encoded(self, lines: Sequence[str], precision: Precision = "ns") -> Any: ...


@dataclass
class Metrics:
    """Counters and gauges of one ingest process."""

    # MQTT loop
    received: int = 0
    accepted: int = 0
    readings: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys((c.value for c in RejectCode), 0))
    # (vendor, ACCEPTED or reject code) -> messages. The reporter reads a copy: dict.copy() is atomic
    # under the GIL, so a key the MQTT loop adds meanwhile cannot break it.
    by_vendor: dict[tuple[str, str], int] = field(default_factory=dict)
    # vendor -> rejections answered but not kept (over the vendor's reject store budget)
    rejects_not_stored: dict[str, int] = field(default_factory=dict)
    # connection and committer
    session_not_present: int = 0
    session_restored: int = 0  # reconnects to a restarted broker that restored the session (maybe an old copy)
    broker_dropped: int = 0  # increase of the broker's $SYS dropped-message counter seen by this process
    connects: int = 0
    stale_acks: int = 0
    commits: int = 0
    committed_records: int = 0
    commit_ms_max: float = 0.0
    ack_lag_ms_max: float = 0.0
    paused: int = 0
    spool_bytes: int = 0
    # raw writer
    write_points: int = 0
    write_batches: int = 0
    write_retries: int = 0  # failed writes the raw writer retries
    storage_retries: int = 0  # retries inside storage.writer (a total, set from its stats)
    dead_letters: int = 0
    corrupt_records: int = 0
    # spool integrity: closed segments found damaged, and their records that could not be read
    spool_damaged_segments: int = 0
    spool_lost_records: int = 0
    write_ms: list[float] = field(default_factory=list)
    spool_lag: int = 0
    spool_lag_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_outcome(self, result: Accepted | Rejected) -> None:
        """Count a decoded message for its sensor's vendor (`_unknown` when the topic names no registered one)."""
        vendor = result.sensor.vendor if result.sensor is not None else UNKNOWN_VENDOR
        key = (vendor, result.code.value if isinstance(result, Rejected) else ACCEPTED)
        self.by_vendor[key] = self.by_vendor.get(key, 0) + 1

    def messages_by_vendor(self) -> dict[str, int]:
        """Messages counted per vendor since start, whatever their outcome."""
        counts: dict[str, int] = {}
        for (vendor, _outcome), count in list(self.by_vendor.items()):
            counts[vendor] = counts.get(vendor, 0) + count
        return counts

    def count_damaged(self, checks: Iterable[SegmentCheck]) -> None:
        with self._lock:
            for check in checks:
                self.spool_damaged_segments += 1
                self.spool_lost_records += check.lost

    def observe_commit(self, records: int, commit_ms: float, ack_lag_ms: float) -> None:
        with self._lock:
            self.commits += 1
            self.committed_records += records
            self.commit_ms_max = max(self.commit_ms_max, commit_ms)
            self.ack_lag_ms_max = max(self.ack_lag_ms_max, ack_lag_ms)

    def observe_write(self, points: int, latency_ms: float) -> None:
        with self._lock:
            self.write_points += points
            self.write_batches += 1
            self.write_ms.append(latency_ms)

    def take_interval(self) -> dict[str, float]:
        """Per-interval maxima and means, reset for the next interval."""
        with self._lock:
            write_ms, self.write_ms = self.write_ms, []
            out = {
                "commit_ms_max": self.commit_ms_max,
                "ack_lag_ms_max": self.ack_lag_ms_max,
                "write_latency_ms_mean": sum(write_ms) / len(write_ms) if write_ms else 0.0,
                "write_latency_ms_max": max(write_ms, default=0.0),
            }
            self.commit_ms_max = self.ack_lag_ms_max = 0.0
        return out

    def counters(self) -> dict[str, int]:
        flat = {
            name: getattr(self, name)
            for name in (
                "received",
                "accepted",
                "readings",
                "duplicates",
                "session_not_present",
                "session_restored",
                "broker_dropped",
                "stale_acks",
                "commits",
                "committed_records",
                "write_points",
                "write_batches",
                "write_retries",
                "dead_letters",
                "corrupt_records",
                "spool_damaged_segments",
                "spool_lost_records",
            )
        }
        flat["write_retries"] += self.storage_retries
        flat["rejects_not_stored"] = sum(self.rejects_not_stored.copy().values())  # the MQTT loop may add a key
        flat["rejected"] = sum(self.rejected.values())
        flat.update({f"rejected_{code}": n for code, n in self.rejected.items()})
        return flat

    def gauges(self) -> dict[str, float]:
        return {
            "spool_bytes": self.spool_bytes,
            "spool_lag": self.spool_lag,
            "spool_lag_s": self.spool_lag_s,
            "paused": self.paused,
        }


class Reporter:
    """Writes a point of `Metrics` every interval; keeps a bounded backlog while InfluxDB is down."""

    def __init__(
        self,
        metrics: Metrics,
        instance: str,
        sink: PointSink,
        interval_s: float,
        on_report: Callable[[dict[str, FieldValue]], None] | None = None,
        refresh: Callable[[], None] | None = None,
        *,
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        self.metrics = metrics
        self.keep = keep  # which fields this process reports (None: all)
        self.instance = instance
        self.sink = sink
        self.interval_s = interval_s
        self.on_report = on_report
        self.refresh = refresh  # updates the gauges just before a report
        self._previous = metrics.counters()
        self._previous_vendors = metrics.by_vendor.copy()
        self._previous_not_stored = metrics.rejects_not_stored.copy()
        self._backlog: collections.deque[list[Point]] = collections.deque(maxlen=BACKLOG_REPORTS)
        self._failures = 0
        self._skip = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Write a last report (best effort) and stop."""
        self._stop.set()
        self._thread.join(timeout_s)

    def report(self) -> dict[str, FieldValue]:
        """The fields of this interval, queued for InfluxDB."""
        if self.refresh is not None:
            self.refresh()
        counters = self.metrics.counters()
        values: dict[str, float] = {name: value - self._previous.get(name, 0) for name, value in counters.items()}
        self._previous = counters
        values.update(self.metrics.take_interval())
        values.update(self.metrics.gauges())
        values["commit_records_mean"] = values["committed_records"] / values["commits"] if values["commits"] else 0.0
        batches = values["write_batches"]
        values["write_batch_points_mean"] = values["write_points"] / batches if batches else 0.0
        fields: dict[str, FieldValue] = dict(values)
        if self.keep is not None:
            fields = {name: value for name, value in fields.items() if self.keep(name)}
        ts_ms = int(time.time() * 1000)
        self._backlog.append([ingest_point(self.instance, fields, ts_ms), *self.vendor_points(ts_ms)])
        return fields

    def vendor_points(self, ts_ms: int) -> list[Point]:
        """This interval's `ingest_vendors` point of every vendor seen since the start (zeros included, so a
        vendor gone quiet shows 0), and an `ingest_rejects` point per vendor and code that occurred."""
        counts = self.metrics.by_vendor.copy()
        received: dict[str, int] = {}
        accepted: dict[str, int] = {}
        points = []
        for (vendor, outcome), total in sorted(counts.items()):
            n = total - self._previous_vendors.get((vendor, outcome), 0)
            received[vendor] = received.get(vendor, 0) + n
            if outcome == ACCEPTED:
                accepted[vendor] = n
            elif n:
                points.append(ingest_reject_point(self.instance, vendor, outcome, n, ts_ms))
        self._previous_vendors = counts
        not_stored = self.metrics.rejects_not_stored.copy()
        for vendor, n in received.items():
            ok = accepted.get(vendor, 0)
            dropped = not_stored.get(vendor, 0) - self._previous_not_stored.get(vendor, 0)
            points.append(
                ingest_vendor_point(
                    self.instance, vendor, received=n, accepted=ok, rejected=n - ok, ts_ms=ts_ms,
                    rejects_not_stored=dropped,
                )
            )  # fmt: skip
        self._previous_not_stored = not_stored
        return points

    def flush(self) -> bool:
        """Send the backlog; False (kept for later) if InfluxDB did not take it.

        After a failure the next attempts back off (one interval, two, four, ... up to
        `MAX_BACKOFF_INTERVALS`), so an InfluxDB outage does not fill the log every interval.
        """
        if not self._backlog:
            return True
        if self._skip > 0:
            self._skip -= 1
            return False
        reports = list(self._backlog)
        points = [point for report in reports for point in report]
        try:
            self.sink.write(points)
        except Exception as err:  # a metrics failure must never stop ingest
            self._failures += 1
            self._skip = min(2 ** (self._failures - 1), MAX_BACKOFF_INTERVALS) - 1
            if self._failures == 1:
                logger.warning("could not write ingest metrics (kept, up to %d reports): %s", BACKLOG_REPORTS, err)
            return False
        if self._failures:
            logger.info("ingest metrics written again (%d reports kept during the outage)", len(reports))
        self._failures = self._skip = 0
        for _ in reports:
            self._backlog.popleft()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._once()
        self._once()

    def _once(self) -> None:
        try:
            fields = self.report()
            if self.on_report is not None:
                self.on_report(fields)
        except Exception:
            logger.exception("building the ingest metrics failed")
        self.flush()
