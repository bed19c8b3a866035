"""Rollups in `bench/compare.py`: `smartcity pipeline rollup` (Beam) against InfluxDB's own
downsampling (what a continuous query runs)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bench.ingest import Bench
from bench.peer_consumers import ROOT, BenchError, Ingest, Key, Points
from sensors.registry import Registry
from sensors.simulator import HOUR_MS
from storage.query import ident, quote_ident
from storage.schema import SENSOR_TAGS, WINDOWS, rollup_field, rollup_levels, rollup_stats
from storage.settings import InfluxSettings

if TYPE_CHECKING:
    from bench.compare import Stream

# -- rollups: Beam against InfluxDB's own downsampling -------------------------------------------------


@dataclass
class Rollups:
    beam_s: float
    beam_summary: str
    cq_district_1m_s: float
    cq_all_s: float
    statements: int
    beam_points: int = 0
    cq_points: int = 0
    equal: int = 0
    differ: int = 0
    example: str = ""


# The finest rollup the pipelines write: below it, readers take the raw points (`storage.schema.rollup_levels`).
COMPARED = ("1m", "district")


def cq_statement(registry: Registry, kind: str, window: str, level: str, start_ms: int, end_ms: int) -> str:
    """What a continuous query runs: `SELECT mean(m) AS m_mean, ... INTO ... GROUP BY time(window), <level's tags>`."""
    settings = InfluxSettings()
    stats = ", ".join(
        f"{stat}({quote_ident(m.name)}) AS {quote_ident(rollup_field(m.name, stat))}"
        for m in registry.kinds[kind].metrics
        for stat in rollup_stats(m.aggregate)  # those the pipelines store; InfluxQL's functions have their names
    )
    # `*` keeps every sensor tag; an area level groups by the tags up to its own (super_cluster, city, district).
    tags = "*" if level == "sensor" else ", ".join(map(quote_ident, SENSOR_TAGS[: SENSOR_TAGS.index(level) + 1]))
    into = f"{quote_ident(settings.rollup_rp)}.{quote_ident(cq_measurement(kind, window, level))}"
    source = f"{quote_ident(settings.raw_rp)}.{quote_ident(kind)}"
    return (
        f"SELECT {stats} INTO {into} FROM {source} WHERE time >= {start_ms}ms AND time < {end_ms}ms "
        f"GROUP BY time({window}), {tags}"
    )


def cq_measurement(kind: str, window: str, level: str) -> str:
    return f"{kind}_{window}_cq" + ("" if level == "sensor" else f"_{level}")


def rollups(bench: Bench, registry: Registry, ingest: Ingest, stream: Stream) -> Rollups:
    """`smartcity pipeline rollup` over the spool of `ingest`, then InfluxQL INTO over its raw points; compared."""
    times = sorted(t for _, t in stream.expected)
    start, end = times[0] // HOUR_MS * HOUR_MS, (times[-1] // HOUR_MS + 1) * HOUR_MS
    env = {**bench.env_base, "SMARTCITY_HOME": str(ingest.home), "SMARTCITY_INFLUX_DB": ingest.db}
    command = [sys.executable, "-m", "deploy.cli", "pipeline", "rollup", "--from", iso(start), "--to", iso(end)]
    began = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    beam_s = time.perf_counter() - began
    if done.returncode:
        raise BenchError(f"smartcity pipeline rollup exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    points = Points(bench, registry, ingest.db)
    # Like for like: InfluxQL writes the windows, levels and statistics the pipelines write, and nothing else.
    levels: dict[str, dict[str, tuple[str, ...]]] = {
        k.id: {w: rollup_levels(w, k.interval_s) for w in WINDOWS} for k in registry.kinds.values()
    }
    written = [(k, w, lv) for k in registry.kinds for w in WINDOWS for lv in levels[k][w]]
    compared = [cq_statement(registry, k, w, lv, start, end) for k, w, lv in written if (w, lv) == COMPARED]
    others = [cq_statement(registry, k, w, lv, start, end) for k, w, lv in written if (w, lv) != COMPARED]
    began = time.perf_counter()
    points.client.execute(";\n".join(compared))
    cq_compared_s = time.perf_counter() - began
    began = time.perf_counter()
    points.client.execute(";\n".join(others))
    result = Rollups(beam_s, done.stdout.strip(), cq_compared_s, cq_compared_s + time.perf_counter() - began,
                     len(written))  # fmt: skip
    window, level = COMPARED
    for kind in registry.kinds.values():
        if level not in levels[kind.id][window]:
            continue
        fields = [rollup_field(m.name, stat) for m in kind.metrics for stat in rollup_stats(m.aggregate)]
        where = "WHERE {tag} = {level}"
        ours = rows_by(points, f"{kind.id}_{window}", "area", fields, where, tag=ident("level"), level=level)
        theirs = rows_by(points, cq_measurement(kind.id, window, level), level, fields)
        result.beam_points += len(ours)
        result.cq_points += len(theirs)
        for key in ours.keys() & theirs.keys():
            if all(same(a, b) for a, b in zip(ours[key], theirs[key], strict=True)):
                result.equal += 1
            else:
                result.differ += 1
                result.example = result.example or f"{kind.id} {key}: Beam {ours[key]} vs InfluxQL {theirs[key]}"
    points.close()
    return result


def rows_by(
    points: Points, measurement: str, key_tag: str, fields: list[str], where: str = "", **params: object
) -> dict[Key, tuple[Any, ...]]:
    """{(value of `key_tag`, window start ms): field values} of a rollup measurement."""
    columns = ", ".join(f"{{f{i}}}" for i in range(len(fields)))
    statement = f"SELECT {columns}, {{key}} FROM {{m}} {where}"
    params |= {f"f{i}": ident(f) for i, f in enumerate(fields)}
    params |= {"key": ident(key_tag), "m": ident(points.settings.rollup_rp, measurement)}
    return {(row[-1], row[0] // 1_000_000): tuple(row[1:-1]) for row in points._rows(statement, params)}


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
