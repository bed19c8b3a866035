"""The per-vendor counters of `ingest.metrics` and the points a report makes of them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ingest.metrics import Metrics, Reporter
from sensors.contract import Accepted, RejectCode, Rejected
from sensors.registry import default_registry
from storage.line_protocol import Point
from storage.schema import INGEST_REJECTS_MEASUREMENT, INGEST_VENDORS_MEASUREMENT, UNKNOWN_VENDOR


class Collect:
    """A sink that keeps what it is given (the reporter's own logic is under test, not a database)."""

    def __init__(self) -> None:
        self.points: list[Point] = []

    def write(self, points: Iterable[Point]) -> Any:
        self.points.extend(points)

    def close(self) -> None:
        pass


def vendor_figures(points: list[Point]) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], Any]]:
    vendors = {p.tags["vendor"]: dict(p.fields) for p in points if p.measurement == INGEST_VENDORS_MEASUREMENT}
    rejects = {
        (p.tags["vendor"], p.tags["code"]): p.fields["rejected"]
        for p in points
        if p.measurement == INGEST_REJECTS_MEASUREMENT
    }
    return vendors, rejects


def test_each_interval_counts_per_vendor_and_a_quiet_vendor_reports_zeros() -> None:
    registry = default_registry()
    sensor = registry.sensors["pkt-aq-001"]
    metrics = Metrics()
    sink = Collect()
    reporter = Reporter(metrics, "it", sink, interval_s=10)
    for _ in range(3):
        metrics.count_outcome(Accepted([sensor.reading(0, {"pm25": 1.0})], sensor))
    metrics.count_outcome(Rejected(RejectCode.OUT_OF_RANGE, "pm25: -3", sensor))
    metrics.count_outcome(Rejected(RejectCode.UNKNOWN_SENSOR, "no such sensor"))
    reporter.report()
    assert reporter.flush()
    vendors, rejects = vendor_figures(sink.points)
    assert vendors == {
        sensor.vendor: {"received": 4, "accepted": 3, "rejected": 1, "rejects_not_stored": 0},
        UNKNOWN_VENDOR: {"received": 1, "accepted": 0, "rejected": 1, "rejects_not_stored": 0},
    }
    assert rejects == {(sensor.vendor, "out_of_range"): 1, (UNKNOWN_VENDOR, "unknown_sensor"): 1}

    sink.points.clear()
    metrics.count_outcome(Rejected(RejectCode.INVALID_JSON, "bad", sensor))
    metrics.rejects_not_stored[sensor.vendor] = 1  # over its reject store budget: answered, not kept
    fields = reporter.report()
    assert reporter.flush()
    assert fields["rejects_not_stored"] == 1
    vendors, rejects = vendor_figures(sink.points)
    assert vendors == {
        sensor.vendor: {"received": 1, "accepted": 0, "rejected": 1, "rejects_not_stored": 1},
        UNKNOWN_VENDOR: {"received": 0, "accepted": 0, "rejected": 0, "rejects_not_stored": 0},
    }
    assert rejects == {(sensor.vendor, "invalid_json"): 1}
