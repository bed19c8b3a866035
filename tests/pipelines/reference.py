"""The pipelines' figures computed again in plain Python, straight from the readings, for end-to-end checks.

Deliberately written without numpy, Beam or any pipelines module: loops and dicts over `Reading`s,
following the rules stated in docs/pipelines.md. Only the AQI table itself (`sensors.aqi`) is shared.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sensors.aqi import AVERAGING_HOURS, UNITS, thai_aqi
from sensors.reading import Reading
from sensors.registry import Registry

MINUTE, HOUR = 60_000, 3_600_000
Key = tuple[str, tuple[tuple[str, str], ...], int]  # measurement, sorted tags, time (ms)


def unique(readings: Iterable[Reading]) -> list[Reading]:
    """One reading per (sensor_id, ts): the one received last."""
    best: dict[tuple[str, int], Reading] = {}
    for r in readings:
        key = (r.sensor_id, r.ts)
        if key not in best or r.received >= best[key].received:
            best[key] = r
    return list(best.values())


def areas(r: Reading) -> list[dict[str, str]]:
    return [
        {
            "level": "sensor",
            "area": r.sensor_id,
            "super_cluster": r.super_cluster,
            "city": r.city,
            "district": r.district,
        },
        {
            "level": "district",
            "area": r.district,
            "super_cluster": r.super_cluster,
            "city": r.city,
            "district": r.district,
        },
        {"level": "city", "area": r.city, "super_cluster": r.super_cluster, "city": r.city},
        {"level": "super_cluster", "area": r.super_cluster, "super_cluster": r.super_cluster},
    ]


def frozen(tags: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(tags.items()))


def rollups(readings: Iterable[Reading], start: int, end: int, registry: Registry) -> dict[Key, dict[str, Any]]:
    """`{kind}_1m` and `{kind}_1h` rows: per window, level and metric the mean, min, max, count and (for a
    `sum` metric) sum. What readers use only: no sensor row in a window no longer than the kind's interval."""
    values: dict[tuple[Key, str], list[float]] = defaultdict(list)
    for r in unique(readings):
        if not start <= r.ts < end:
            continue
        interval_ms = registry.kinds[r.kind].interval_s * 1000
        for name, width in (("1m", MINUTE), ("1h", HOUR)):
            for tags in areas(r):
                if tags["level"] == "sensor" and width <= interval_ms:
                    continue
                key = (f"{r.kind}_{name}", frozen(tags), r.ts - r.ts % width)
                for metric, value in r.values.items():
                    values[(key, metric)].append(value)
    sums = {(kind.id, m.name) for kind in registry.kinds.values() for m in kind.metrics if m.aggregate == "sum"}
    rows: dict[Key, dict[str, Any]] = defaultdict(dict)
    for (key, metric), seen in values.items():
        rows[key].update(
            {
                f"{metric}_mean": sum(seen) / len(seen),
                f"{metric}_min": min(seen),
                f"{metric}_max": max(seen),
                f"{metric}_count": len(seen),
            }
        )
        if (key[0].rsplit("_", 1)[0], metric) in sums:
            rows[key][f"{metric}_sum"] = math.fsum(seen)
    return dict(rows)


def aqi(readings: Iterable[Reading], registry: Registry, hours: Iterable[int]) -> dict[Key, dict[str, Any]]:
    """`aqi_1h` rows for the given hour starts (see docs/pipelines.md, "How the AQI is formed")."""
    # 1. Hourly mean per sensor and pollutant, if the hour has 75 % of the readings interval_s promises.
    sums: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    places: dict[str, Reading] = {}
    for r in unique(readings):
        kind = registry.kinds[r.kind]
        for metric, value in r.values.items():
            unit = next(m.unit for m in kind.metrics if m.name == metric)
            if metric in UNITS and UNITS[metric] == unit:
                sums[(r.sensor_id, r.ts - r.ts % HOUR, metric)].append(value)
                places[r.sensor_id] = r
    sensor_hour: dict[tuple[str, int, str], float] = {}
    for (sensor, hour, metric), seen in sums.items():
        needed = 0.75 * 3600 / registry.kinds[places[sensor].kind].interval_s
        if len(seen) >= needed:
            sensor_hour[(sensor, hour, metric)] = sum(seen) / len(seen)
    # 2. Area hour: the mean of the valid sensor hours in it, each sensor once.
    by_row: dict[tuple[tuple[tuple[str, str], ...], int, str], list[float]] = defaultdict(list)
    for (sensor, hour, metric), mean in sensor_hour.items():
        for tags in areas(places[sensor]):
            by_row[(frozen(tags), hour, metric)].append(mean)
    row_hour = {key: sum(v) / len(v) for key, v in by_row.items()}
    rows_of = {row for row, _, _ in row_hour}
    # 3. Period means ending with the hour: 75 % of the period's hours, and the hour itself, valid.
    result: dict[Key, dict[str, Any]] = {}
    for hour in hours:
        for row in rows_of:
            concentrations = {}
            for pollutant, period in AVERAGING_HOURS.items():
                if (row, hour, pollutant) not in row_hour:
                    continue
                means = [
                    row_hour[(row, h, pollutant)]
                    for h in range(hour - (period - 1) * HOUR, hour + 1, HOUR)
                    if (row, h, pollutant) in row_hour
                ]
                if len(means) >= math.ceil(0.75 * period):
                    concentrations[pollutant] = sum(means) / len(means)
            found = thai_aqi(concentrations)
            if found is not None:
                result[("aqi_1h", row, hour)] = {
                    "aqi": found.aqi,
                    "band": found.band.number,
                    "dominant": found.dominant,
                    **{f"{p}_aqi": v for p, v in found.sub_indices.items()},
                }
    return result


def seq_gaps(readings: Iterable[Reading]) -> dict[tuple[str, int], int]:
    """`seq_gaps` of `sensor_health_1h` per (sensor_id, hour start): in ts order within the hour, the
    numbers skipped between consecutive readings that carry a seq; a number that does not go up is a restart."""
    by_hour: dict[tuple[str, int], list[Reading]] = defaultdict(list)
    for r in unique(readings):
        by_hour[(r.sensor_id, r.ts - r.ts % HOUR)].append(r)
    result = {}
    for key, seen in by_hour.items():
        numbers = [r.seq for r in sorted(seen, key=lambda r: r.ts) if r.seq is not None]
        result[key] = sum(b - a - 1 for a, b in itertools.pairwise(numbers) if b > a + 1)
    return result
