"""A small, realistic data set in every measurement the dashboards read, written with storage's writer.

Two hours of readings of every sensor of a registry at its kind's interval (values on a diurnal-ish
curve inside each metric's range, water levels around the site's warning line), the 1m and 1h
rollups at sensor, district and city level computed from them, holding only what the pipelines store
(`storage.schema.rollup_levels` and `rollup_stats`: no sensor-level 1m where a kind reports every minute
or less often, `_sum` only for `sum` metrics), so a panel that reads anything else finds no data;
hourly AQI per district and city, hourly sensor health, anomalies (spikes and rapid rises), and ingest
self-metrics (per process and per vendor) every 10 s.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator

from sensors.aqi import POLLUTANTS, thai_aqi
from sensors.contract import RejectCode
from sensors.registry import Registry, Sensor
from storage import schema
from storage.line_protocol import Point
from storage.settings import InfluxSettings
from storage.writer import make_writer

HOURS = 2
# Typical concentrations, so the AQI lands in a mid band (the rest of the range is unused).
TYPICAL = {"pm25": 40.0, "pm10": 70.0, "o3": 30.0, "co": 2.0, "no2": 40.0, "so2": 10.0}


def value(registry: Registry, sensor: Sensor, metric: str, ts_ms: int) -> float:
    kind = registry.kinds[sensor.kind]
    spec = kind.metric(metric)
    assert spec is not None
    wave = 0.5 + 0.3 * math.sin(ts_ms / 3_600_000 + hash(sensor.id) % 7)
    threshold = registry.threshold(sensor.site, metric)
    if threshold is not None:
        return round(threshold.warning * (0.8 + 0.3 * wave), 3)
    if metric in TYPICAL:
        return round(TYPICAL[metric] * (0.6 + wave), 2)
    low, high = spec.min, min(spec.max, spec.min + 200)
    return round(low + (high - low) * wave, 2)


def points(registry: Registry, now_ms: int | None = None) -> tuple[list[Point], list[Point]]:
    """(raw RP points, rollup RP points)."""
    now_ms = now_ms or int(time.time() * 1000)
    start = (now_ms - HOURS * 3_600_000) // 60_000 * 60_000
    raw: list[Point] = []
    rollup: list[Point] = []
    # (kind, level, area, minute) -> metric -> values; the enclosing tags per (level, area).
    minutes: dict[tuple[str, str, str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    places: dict[tuple[str, str], dict[str, str]] = {}
    pollutant_means: dict[tuple[str, str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sensor in registry.sensors.values():
        kind = registry.kinds[sensor.kind]
        levels = {
            ("sensor", sensor.id): schema.rollup_tags(
                "sensor", sensor.id, super_cluster=sensor.super_cluster, city=sensor.city, district=sensor.district
            ),
            ("district", sensor.district): schema.rollup_tags(
                "district",
                sensor.district,
                super_cluster=sensor.super_cluster,
                city=sensor.city,
                district=sensor.district,
            ),
            ("city", sensor.city): schema.rollup_tags(
                "city", sensor.city, super_cluster=sensor.super_cluster, city=sensor.city
            ),
        }
        places.update(levels)
        tags = {
            "super_cluster": sensor.super_cluster,
            "city": sensor.city,
            "district": sensor.district,
            "site": sensor.site,
            "sensor_id": sensor.id,
            "vendor": sensor.vendor,
        }
        for ts in range(start, now_ms, kind.interval_s * 1000):
            values = {m.name: value(registry, sensor, m.name, ts) for m in kind.metrics}
            raw.append(Point(kind.id, tags, values, ts, "ms"))
            minute = ts // 60_000 * 60_000
            for level, area in levels:
                for metric, v in values.items():
                    minutes[(kind.id, level, area, minute)][metric].append(v)
                    if level != "sensor" and metric in TYPICAL:
                        pollutant_means[(level, area, minute // 3_600_000 * 3_600_000)][metric].append(v)
        hour_starts = range(start // 3_600_000 * 3_600_000, now_ms, 3_600_000)
        for hour in hour_starts:
            expected = 3600 // kind.interval_s
            received = expected - (hash((sensor.id, hour)) % 3)
            rollup.append(
                schema.health_point(
                    tags,
                    received=received,
                    expected=expected,
                    flatline=0,
                    outliers=hash(sensor.id) % 2,
                    hour_start_ms=hour,
                    seq_gaps=expected - received,
                )
            )
    hours: dict[tuple[str, str, str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (kind_id, level, area, minute), metrics in minutes.items():
        if level in schema.rollup_levels("1m", registry.kinds[kind_id].interval_s):
            rollup.append(stored(registry, kind_id, "1m", places[(level, area)], metrics, minute))
        for m, readings in metrics.items():
            hours[(kind_id, level, area, minute // 3_600_000 * 3_600_000)][m].extend(readings)
    for (kind_id, level, area, hour), metrics in hours.items():
        rollup.append(stored(registry, kind_id, "1h", places[(level, area)], metrics, hour))
    for (level, area, hour), metrics in pollutant_means.items():
        means = {p.name: sum(metrics[p.name]) / len(metrics[p.name]) for p in POLLUTANTS if metrics.get(p.name)}
        result = thai_aqi(means)
        assert result is not None
        rollup.append(
            schema.aqi_point(
                places[(level, area)],
                aqi=result.aqi,
                band=result.band.number,
                dominant=result.dominant,
                sub_indices=result.sub_indices,
                hour_start_ms=hour,
            )
        )
    rollup.extend(anomaly_points(registry, start, now_ms))
    raw.extend(ingest_points(start, now_ms))
    raw.extend(vendor_points(start, now_ms))
    return raw, rollup


def stats_of(metrics: dict[str, list[float]]) -> dict[str, schema.RollupStats]:
    return {m: (sum(v) / len(v), min(v), max(v), len(v), sum(v)) for m, v in metrics.items()}


def stored(
    registry: Registry, kind_id: str, window: str, tags: dict[str, str], metrics: dict[str, list[float]], time: int
) -> Point:
    """The rollup point with the fields the pipelines store (`_sum` only for a `sum` metric)."""
    point = schema.rollup_point(kind_id, window, tags, stats_of(metrics), time)
    kind = registry.kinds[kind_id]
    keep = {schema.rollup_field(m.name, stat) for m in kind.metrics for stat in schema.rollup_stats(m.aggregate)}
    return point._replace(fields={k: v for k, v in point.fields.items() if k in keep})


def anomaly_points(registry: Registry, start: int, end: int) -> Iterator[Point]:
    """A spike on every fifth sensor, and a rapid rise at every gauge with site thresholds, 30 min ago."""
    for n, sensor in enumerate(registry.sensors.values()):
        kind = registry.kinds[sensor.kind]
        tags = {name: getattr(sensor, name) for name in ("super_cluster", "city", "district", "site", "vendor")}
        tags["sensor_id"] = sensor.id
        if n % 5 == 0:
            metric = kind.metrics[0]
            yield schema.anomaly_point(
                tags,
                kind=kind.id,
                metric=metric.name,
                anomaly_type=schema.ANOMALY_SPIKE,
                value=metric.max * 0.9,
                score=7.2,
                threshold=3.5,
                ts_ms=start + (n * 60_000) % (end - start),
            )
        for name in kind.site_thresholds:
            threshold = registry.threshold(sensor.site, name)
            if threshold is not None:
                yield schema.anomaly_point(
                    tags,
                    kind=kind.id,
                    metric=name,
                    anomaly_type=schema.ANOMALY_RAPID_RISE,
                    value=threshold.warning,
                    score=2 * (threshold.danger - threshold.warning),
                    threshold=threshold.danger - threshold.warning,
                    ts_ms=end - 1_800_000,
                )


def ingest_points(start: int, end: int) -> Iterator[Point]:
    codes = list(RejectCode)
    for i, ts in enumerate(range(start, end, 10_000)):
        rejected = {f"rejected_{codes[i % len(codes)].value}": 1}
        yield schema.ingest_point(
            "ingest-1",
            {
                "received": 250,
                "accepted": 249,
                "rejected": 1,
                "duplicates": 0,
                "spool_lag": 12,
                "spool_lag_s": 0.4,
                "write_batches": 3,
                "write_points": 249,
                "write_latency_ms_mean": 4.5,
                "write_latency_ms_max": 12.0,
                "write_retries": 0,
                "dead_letters": 0,
                **dict.fromkeys(schema.INGEST_LOSS_FIELDS, 0),
                **rejected,
            },
            ts,
        )


# Per report (10 s): (vendor, received, {reject code: messages}). Andaman HydroMet and the unknown topics are
# above the 5% reject-ratio alert line; BinWise too, but with too few messages (90 in 15 min) to page anyone.
VENDOR_TRAFFIC: tuple[tuple[str, int, dict[str, int]], ...] = (
    ("siam-airsense", 120, {}),
    ("andaman-hydromet", 60, {"out_of_range": 4, "invalid_json": 2}),
    ("binwise", 1, {"invalid_json": 1}),
    (schema.UNKNOWN_VENDOR, 2, {"unknown_sensor": 2}),
)


def vendor_points(start: int, end: int) -> Iterator[Point]:
    for ts in range(start, end, 10_000):
        for vendor, received, rejects in VENDOR_TRAFFIC:
            rejected = sum(rejects.values())
            yield schema.ingest_vendor_point(
                "ingest-1", vendor, received=received, accepted=received - rejected, rejected=rejected, ts_ms=ts
            )
            for code, n in rejects.items():
                yield schema.ingest_reject_point("ingest-1", vendor, code, n, ts)


def write_data_set(registry: Registry, settings: InfluxSettings) -> int:
    """Write the data set; returns the number of points."""
    raw, rollup = points(registry)
    for rp, batch in ((settings.raw_rp, raw), (settings.rollup_rp, rollup)):
        writer = make_writer(settings, rp=rp)
        try:
            writer.write(batch)
        finally:
            writer.close()
    return len(raw) + len(rollup)
