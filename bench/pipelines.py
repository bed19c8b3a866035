"""Pipeline throughput: 1M readings of 2,000 sensors, closed spool segments -> 1 m + 1 h rollups at every level.

Writes a spool of closed segments (the format of `sensors.spool`, 50,000
readings each, in time order, one reading a minute per sensor; the sensors sit
at the registry's real sites, across its kinds) and runs each variant in a
process of its own, so each has its own peak RSS:

- `ceiling`: plain Python, one pass: every line verified and decoded with
  `sensors.reading.decode_reading` (msgspec), duplicates dropped, and a dict
  of [sum, min, max, count] per (kind, window, level, area, start, metric);
  windows are emitted as the data moves past them, to keep memory bounded;
- `beam-json`: `ReadSpool` (decoding the JSON lines) -> `WindowedStats` on the
  default local runner (FnApiRunner, in memory); no Parquet copies;
- `beam-cold`: the same, also writing each segment's Parquet copy (a first run);
- `beam-parquet`: the same, reading the Parquet copies (every later run);
- `write`: the rollup points of a run written to a fresh InfluxDB 1.x through
  `storage.writer` (the `WriteToInflux` path), timed on its own.

Rates are readings per second from the start of the pipeline to the last
rollup point; the spool is in the page cache (it was just written).

EXAMPLES
    .venv/bin/python -m bench.pipelines
    .venv/bin/python -m bench.pipelines --readings 200000 --sensors 400 --variants ceiling,beam-parquet
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

VARIANTS = ("ceiling", "beam-json", "beam-cold", "beam-parquet", "write")
SEGMENT_READINGS = 50_000
MINUTE = 60_000
T0 = 1_764_028_800_000  # 2025-11-25T00:00Z


def make_spool(root: Path, readings: int, sensors: int, seed: int = 1) -> None:
    """Closed segments of `readings` readings from `sensors` sensors, one a minute each, in time order."""
    from sensors.reading import encode_reading
    from sensors.registry import default_registry
    from sensors.spool import CLOSED_SUFFIX, OPEN_SUFFIX, READINGS, SegmentInfo, segment_name, write_meta

    registry = default_registry()
    rng = random.Random(seed)
    kinds = sorted(registry.kinds)
    fleet = list(registry.sensors.values())
    made = []
    for i in range(sensors):
        base = fleet[i % len(fleet)]  # real places, kinds and vendors; ids made unique
        made.append((replace(base, id=f"{base.id}-{i // len(fleet)}"), registry.kinds[base.kind]))
    folder = root / "ingest-1"
    folder.mkdir(parents=True)
    buffer: list[bytes] = []
    kinds_in: collections.Counter[str] = collections.Counter()
    seq = 0
    span: list[int] = []

    def close() -> None:
        nonlocal seq, buffer, span
        seq += 1
        data = b"".join(buffer)
        growing = folder / segment_name(READINGS, seq, OPEN_SUFFIX)
        closed = folder / segment_name(READINGS, seq, CLOSED_SUFFIX)
        growing.write_bytes(data)
        count, first, last = len(buffer), min(span), max(span)
        info = SegmentInfo("ingest-1", READINGS, seq, count, len(data), first, last, last, dict(kinds_in))
        write_meta(info, closed)
        os.replace(growing, closed)
        buffer, span = [], []
        kinds_in.clear()

    for n in range(readings):
        sensor, kind = made[n % sensors]
        ts = T0 + (n // sensors) * MINUTE + (zlib.crc32(sensor.id.encode()) % 50_000)
        values = {m.name: round(m.min + rng.random() * min(m.max - m.min, 100.0), 2) for m in kind.metrics}
        reading = sensor.reading(ts, values, seq=n, received=ts + 300)
        buffer.append(encode_reading(reading))
        kinds_in[kind.id] += 1
        span.append(ts)
        if len(buffer) == SEGMENT_READINGS:
            close()
    if buffer:
        close()
    del kinds


def ceiling(root: Path) -> dict[str, float]:
    from sensors.reading import decode_reading
    from sensors.spool import closed_segments, iter_lines

    started = time.perf_counter()
    cells: dict[tuple[str, int, str, str, int], dict[str, list[float]]] = {}
    seen: set[tuple[str, int]] = set()
    count = rows = 0
    latest = 0
    for segment in closed_segments(root):
        for line in iter_lines(segment.path):
            r = decode_reading(line)
            if (r.sensor_id, r.ts) in seen:
                continue
            seen.add((r.sensor_id, r.ts))
            count += 1
            latest = max(latest, r.ts)
            areas = (
                ("sensor", r.sensor_id),
                ("district", r.district),
                ("city", r.city),
                ("super_cluster", r.super_cluster),
            )
            for width in (60_000, 3_600_000):
                start = r.ts - r.ts % width
                for level, area in areas:
                    cell = cells.setdefault((r.kind, width, level, area, start), {})
                    for metric, v in r.values.items():
                        s = cell.get(metric)
                        if s is None:
                            cell[metric] = [v, v, v, 1]
                        else:
                            s[0] += v
                            if v < s[1]:
                                s[1] = v
                            if v > s[2]:
                                s[2] = v
                            s[3] += 1
        # Windows that ended an hour before the newest reading are final: emit (count) and forget them.
        done = [key for key in cells if key[4] + key[1] < latest - 3_600_000]
        for key in done:
            rows += 1
            del cells[key]
    rows += len(cells)
    return {"seconds": time.perf_counter() - started, "readings": count, "rows": rows}


def _count(batch: Any) -> Any:
    from apache_beam.metrics import Metrics

    Metrics.counter("bench", "rollup_rows").inc(len(batch))
    return batch


def beam_rollup(root: Path, cache: Path | None, keep: Path | None = None) -> dict[str, float]:
    """The rollup pipeline; with `keep`, its point batches are also pickled into that file (for `write`)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.transforms.window import GlobalWindows

    from pipelines.options import beam_options
    from pipelines.read_spool import ReadSpool
    from pipelines.windowed_stats import WindowedStats
    from sensors.registry import default_registry

    registry = default_registry()
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=beam_options([]))
    rollups = (
        pipeline
        | "ReadSpool" >> ReadSpool(root, registry, cache_dir=cache)
        | "WindowedStats" >> WindowedStats(registry)
        | "Count" >> beam.Map(_count)
    )
    if keep is not None:
        saved = rollups | "Unwindow" >> beam.WindowInto(GlobalWindows()) | "Keep" >> beam.combiners.ToList()
        _ = saved | "Save" >> beam.Map(lambda b: keep.write_bytes(pickle.dumps(b)))
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    return {
        "seconds": seconds,
        "readings": counters["readings"],
        "rows": counters["rollup_rows"],
        "from_cache": counters.get("segments_from_cache", 0),
    }


def write(root: Path, cache: Path) -> dict[str, float]:
    from deploy.servers import InfluxDB, free_port
    from storage.bootstrap import bootstrap
    from storage.settings import InfluxSettings
    from storage.writer import make_writer

    saved = root.parent / "rollups.pickle"
    beam_rollup(root, cache, keep=saved)
    batches = pickle.loads(saved.read_bytes())
    with tempfile.TemporaryDirectory(prefix="smartcity-bench-") as tmp:
        influx = InfluxDB(data_dir=Path(tmp) / "influxdb", port=free_port(), rpc_port=free_port())
        influx.start()
        try:
            password = "bench-" + os.urandom(6).hex()
            influx.ensure_admin("admin", password)
            settings = InfluxSettings(url=influx.base_url, username="admin", password=password)
            bootstrap(settings)
            converting = writing = 0.0
            points = 0
            with make_writer(settings, rp=settings.rollup_rp) as writer:
                for batch in batches:  # as WriteToInflux does: one batch's points at a time
                    started = time.perf_counter()
                    converted = batch.points()
                    done = time.perf_counter()
                    writer.write(converted)
                    converting, writing = converting + done - started, writing + time.perf_counter() - done
                    points += len(converted)
        finally:
            influx.stop()
    return {"seconds": converting + writing, "points": points, "to_points_s": converting, "write_s": writing}


def child(variant: str, root: Path, cache: Path) -> None:
    if variant == "ceiling":
        result = ceiling(root)
    elif variant == "beam-json":
        result = beam_rollup(root, None)
    elif variant == "beam-cold":
        result = beam_rollup(root, cache)
    elif variant == "beam-parquet":
        result = beam_rollup(root, cache)
        if not result["from_cache"]:
            raise SystemExit("beam-parquet found no Parquet copies: run beam-cold first")
    else:
        result = write(root, cache)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--sensors", type=int, default=2_000)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.root, args.root.parent / "columns")
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]}")
    with tempfile.TemporaryDirectory(prefix="smartcity-bench-") as tmp:
        root = Path(tmp) / "spool"
        print(f"writing a spool of {args.readings:,} readings from {args.sensors:,} sensors ...", file=sys.stderr)
        make_spool(root, args.readings, args.sensors)
        size = sum(p.stat().st_size for p in root.rglob("*.seg")) / 2**20
        results = {}
        for variant in variants:
            command = [sys.executable, "-m", "bench.pipelines", "--child", variant, "--root", str(root)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
            print(variant, results[variant], file=sys.stderr)
    python = f"{platform.python_implementation()} {platform.python_version()}"
    cpus = f"{os.cpu_count()} CPUs"
    print(f"\n{args.readings:,} readings, {args.sensors:,} sensors, spool {size:.0f} MiB; {python}, {cpus}\n")
    print("| variant | readings/s | rollup rows | time | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    ceiling_rate = None
    for variant, r in results.items():
        if variant == "write":
            rate = f"{r['points'] / r['write_s']:,.0f} points/s"
            took = f"{r['seconds']:.2f} s (to points {r['to_points_s']:.2f} s)"
            print(
                f"| write rollup points to InfluxDB | {rate} | {r['points']:,} | {took} | {r['peak_rss_mib']:.0f} MiB |"
            )
            continue
        rate = r["readings"] / r["seconds"]
        ceiling_rate = rate if variant == "ceiling" else ceiling_rate
        share = f" ({rate / ceiling_rate:.1f}x ceiling)" if ceiling_rate and variant != "ceiling" else ""
        took, rss = f"{r['seconds']:.2f} s", f"{r['peak_rss_mib']:.0f} MiB"
        print(f"| {variant} | {rate:,.0f}{share} | {r['rows']:,} | {took} | {rss} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
