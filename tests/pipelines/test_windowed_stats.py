"""WindowedStats: per-minute and per-hour mean/min/max/count at the stored levels, duplicates once, late data.

Expected values are worked out by hand from SAMPLE_DATA, not by the code under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines.read_spool import ReadSpool
from pipelines.windowed_stats import WindowedStats
from sensors.registry import Registry
from tests.pipelines.conftest import batch_pipeline, collect, row, streaming_pipeline, to_rows
from tests.pipelines.spooldata import HOUR, T0, batches_of, reading, write_segment

PHUKET = {"super_cluster": "andaman", "city": "phuket", "district": "mueang-phuket"}
LANNA = {"super_cluster": "lanna", "city": "chiang-mai", "district": "mueang-chiang-mai"}


def tags(level: str, area: str, places: dict[str, str]) -> dict[str, str]:
    keep = {"sensor": 3, "district": 3, "city": 2, "super_cluster": 1}[level]
    return {"level": level, "area": area, **dict(list(places.items())[:keep])}


def point(measurement: str, tags: dict[str, str], time: int, **stats: tuple[float, float, float, int]) -> Any:
    """A rollup row; air-quality metrics are means, so no `_sum` is stored (`storage.schema.rollup_stats`)."""
    fields: dict[str, Any] = {}
    for metric, (mean, low, high, count) in stats.items():
        fields.update({f"{metric}_mean": mean, f"{metric}_min": low, f"{metric}_max": high, f"{metric}_count": count})
    return row(type("P", (), {"measurement": measurement, "tags": tags, "time": time, "fields": fields}))


def sample_data(registry: Registry) -> list[Any]:
    """Two Phuket sensors in one district and one in Chiang Mai; a duplicate; a second minute."""
    a1, a2 = registry.sensors["pkt-aq-001"], registry.sensors["pkt-aq-002"]
    c1 = registry.sensors["cnx-aq-001"]
    return [
        reading(a1, T0 + 10_000, {"pm25": 10.0}),
        reading(a1, T0 + 10_000, {"pm25": 10.0}, received=T0 + 99_000),  # QoS 1 redelivery: counts once
        reading(a1, T0 + 40_000, {"pm25": 20.0, "pm10": 5.0}),
        reading(a1, T0 + 70_000, {"pm25": 30.0}),
        reading(a2, T0 + 20_000, {"pm25": 40.0}),
        reading(c1, T0 + 30_000, {"pm25": 100.0}),
    ]


def expected_minutes() -> list[Any]:
    """Area levels only: air-quality sensors report every minute, so a sensor's minute is its raw reading."""
    m0, m1 = T0, T0 + 60_000
    mueang = {"pm25": (70 / 3, 10.0, 40.0, 3), "pm10": (5.0, 5.0, 5.0, 1)}
    return [
        point("air_quality_1m", tags("district", "mueang-phuket", PHUKET), m0, **mueang),
        point("air_quality_1m", tags("city", "phuket", PHUKET), m0, **mueang),
        point("air_quality_1m", tags("super_cluster", "andaman", PHUKET), m0, **mueang),
        point("air_quality_1m", tags("district", "mueang-chiang-mai", LANNA), m0, pm25=(100.0, 100.0, 100.0, 1)),
        point("air_quality_1m", tags("city", "chiang-mai", LANNA), m0, pm25=(100.0, 100.0, 100.0, 1)),
        point("air_quality_1m", tags("super_cluster", "lanna", LANNA), m0, pm25=(100.0, 100.0, 100.0, 1)),
        *[
            point("air_quality_1m", tags(level, area, PHUKET), m1, pm25=(30.0, 30.0, 30.0, 1))
            for level, area in [("district", "mueang-phuket"), ("city", "phuket"), ("super_cluster", "andaman")]
        ],
    ]


def expected_hours() -> list[Any]:
    mueang = {"pm25": (25.0, 10.0, 40.0, 4), "pm10": (5.0, 5.0, 5.0, 1)}
    lanna = {"pm25": (100.0, 100.0, 100.0, 1)}
    return [
        point(
            "air_quality_1h",
            tags("sensor", "pkt-aq-001", PHUKET),
            T0,
            pm25=(20.0, 10.0, 30.0, 3),
            pm10=(5.0, 5.0, 5.0, 1),
        ),
        point("air_quality_1h", tags("sensor", "pkt-aq-002", PHUKET), T0, pm25=(40.0, 40.0, 40.0, 1)),
        point("air_quality_1h", tags("district", "mueang-phuket", PHUKET), T0, **mueang),
        point("air_quality_1h", tags("city", "phuket", PHUKET), T0, **mueang),
        point("air_quality_1h", tags("super_cluster", "andaman", PHUKET), T0, **mueang),
        *[
            point("air_quality_1h", tags(level, area, LANNA), T0, **lanna)
            for level, area in [
                ("sensor", "cnx-aq-001"),
                ("district", "mueang-chiang-mai"),
                ("city", "chiang-mai"),
                ("super_cluster", "lanna"),
            ]
        ],
    ]


def test_minute_and_hour_stats_at_every_level(registry: Registry) -> None:
    batches = batches_of(sample_data(registry), registry)
    with batch_pipeline() as p:
        result = to_rows(p | beam.Create(batches) | "WindowedStats" >> WindowedStats(registry))
        assert_that(result, equal_to(expected_minutes() + expected_hours()))


def test_batches_split_across_segments_give_the_same_stats(registry: Registry) -> None:
    """Readings of one window arriving in several batches (segments) in any order are merged."""
    readings = sample_data(registry)
    batches = [b for r in reversed(readings) for b in batches_of([r], registry)]
    with batch_pipeline() as p:
        result = to_rows(p | beam.Create(batches) | "WindowedStats" >> WindowedStats(registry, windows=["1m"]))
        assert_that(result, equal_to(expected_minutes()))


def _sensor_pm25(r: Any) -> list[tuple[Any, ...]]:
    # pkt-aq-001 is the only sensor of its district here: the district's minute is its minute.
    if ("area", "pkt-aq-001") not in r[1] and not (r[0] == "air_quality_1m" and ("area", "mueang-phuket") in r[1]):
        return []
    fields = dict(r[3])
    window = () if r[0] == "air_quality_1m" else ("1h",)
    return [(r[2], *window, fields["pm25_count"], fields["pm25_mean"])]


def sensor_pm25(pane_rows: beam.PCollection) -> beam.PCollection:
    """(window start, ["1h",] pm25 count, pm25 mean) of pkt-aq-001's hour and its district's minute, per pane."""
    return pane_rows | beam.FlatMap(_sensor_pm25)


def test_late_reading_rewrites_the_window_and_too_late_is_dropped(registry: Registry) -> None:
    """Streaming: the on-time pane, then an ACCUMULATING late pane with the window's full value."""
    sensor = registry.sensors["pkt-aq-001"]

    def at(ts: int, value: float) -> list[TimestampedValue]:
        return [TimestampedValue(b, ts / 1000) for b in batches_of([reading(sensor, ts, {"pm25": value})], registry)]

    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements(at(T0 + 10_000, 10.0))
        .advance_watermark_to((T0 + HOUR + 10_000) / 1000)  # the hour is complete: on-time pane
        .add_elements(at(T0 + 20_000, 20.0))  # late, within the allowed lateness: late pane
        .advance_watermark_to((T0 + HOUR + 600_000) / 1000)  # past the hour's end + 300 s lateness
        .add_elements(at(T0 + 30_000, 1000.0))  # too late: dropped
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as p:
        rows = to_rows(p | stream | WindowedStats(registry, allowed_lateness_s=300))
        assert_that(
            sensor_pm25(rows),
            equal_to([(T0, 1, 10.0), (T0, 2, 15.0), (T0, "1h", 1, 10.0), (T0, "1h", 2, 15.0)]),
        )


def run_rollups(spool: Path, registry: Registry, start: int, end: int) -> list[Any]:
    with batch_pipeline() as p:
        rows = collect(to_rows(p | ReadSpool(spool, registry, start, end) | WindowedStats(registry)))
    return sorted(rows)


def test_bounded_rerun_after_late_segment_gives_the_final_value_and_is_idempotent(
    registry: Registry, tmp_path: Path
) -> None:
    readings = sample_data(registry)
    spool = tmp_path / "spool"
    write_segment(spool, 1, readings[1:])
    first = run_rollups(spool, registry, T0, T0 + HOUR)
    assert first == run_rollups(spool, registry, T0, T0 + HOUR)  # same input, same points
    # A late reading of the first minute arrives in a later segment; the re-run rewrites its windows.
    sensor = registry.sensors["pkt-aq-001"]
    write_segment(spool, 2, [reading(sensor, T0 + 50_000, {"pm25": 0.0}, received=T0 + 2 * HOUR)])
    final = run_rollups(spool, registry, T0, T0 + HOUR)
    minute = dict(next(r for r in final if r[0] == "air_quality_1m" and ("area", "mueang-phuket") in r[1])[3])
    assert (minute["pm25_count"], minute["pm25_mean"], minute["pm25_min"]) == (4, 17.5, 0.0)
    assert len(final) == len(first)  # the same series and windows, rewritten


def test_the_sink_encodes_columns_as_the_points_would_be_encoded(registry: Registry) -> None:
    """`PointBatch.lines` (the sink's column-wise encoder) writes exactly the lines of `points()`."""
    from pipelines.windowed_stats import Stored, SummariseHour
    from storage.line_protocol import Encoder, encode_line

    summarise = SummariseHour(("1m", "1h"), Stored.of(registry))
    window = type("W", (), {"start": type("T", (), {"micros": T0 * 1000})()})()
    batches = list(summarise.process(("rollup", batches_of(sample_data(registry), registry)), window))
    assert batches and all(b.tag_index is not None for b in batches)
    for batch in batches:
        assert batch.lines(Encoder()) == [encode_line(p) for p in batch.points()]
