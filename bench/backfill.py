"""Backfill end to end: a day of the pilot fleet through all four pipelines into InfluxDB, against the ceiling.

Starts its own InfluxDB 1.x (deploy.servers, auth on, free ports, temp dir), writes a day of
every registry sensor at its kind's interval as closed spool segments (the generator of
tests/pipelines/spooldata.py, 10,000 readings a segment), then times, each into a fresh
database:

- `cold`: `pipeline run` over the day as the command runs it (`run.slices`, `run_plan`): the
  first read, decoding the JSON lines and writing each segment's Parquet copy;
- `warm`: the same again, reading the Parquet copies (every later run);
- `compute only`: the warm run with the sink's requests answered at once, without InfluxDB
  (what the pipelines cost on their own: end to end can be no faster);
- `ceiling, N connection(s)`: the line protocol the warm run sent (captured at the sink, the
  same points), pre-encoded, POSTed over N keep-alive `http.client` connections, nothing else.

Each timing includes the writes: the run ends when InfluxDB acknowledged its last point.
Prints a markdown table for docs/benchmarks.md and the command. Keep it to one run on a
shared machine: the whole bench takes about a minute and a half.

EXAMPLES
    .venv/bin/python -m bench.backfill
    .venv/bin/python -m bench.backfill --hours 6
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.storage_write import post_plain
from deploy.servers import InfluxDB, free_port
from pipelines import write_to_influx
from pipelines.run import Plan, run_plan, slices
from pipelines.settings import PIPELINES, PipelineSettings
from sensors.registry import default_registry
from storage.bootstrap import bootstrap
from storage.settings import InfluxSettings
from storage.writer import WriteResult
from tests.pipelines.spooldata import HOUR, T0, fleet_readings, write_segments

ADMIN = "bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24, help="hours of the pilot fleet to backfill")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    registry = default_registry()
    end = T0 + args.hours * HOUR
    print(f"generating {args.hours} h of {len(registry.sensors)} sensors ...", file=sys.stderr)
    readings = fleet_readings(registry, registry.sensors.values(), T0, end, random.Random(18))
    captured: list[bytes] = []
    send = write_to_influx._WritePoints._send

    def capturing(self: write_to_influx._WritePoints, body: bytes) -> WriteResult:
        captured.append(body)
        return send(self, body)

    def acknowledged(self: write_to_influx._WritePoints, body: bytes) -> WriteResult:
        return WriteResult(body.count(b"\n"))

    rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="smartcity-bench-") as tmp:
        settings = PipelineSettings(home=Path(tmp) / "home")
        segments = write_segments(settings.spool_root, readings, per_segment=10_000)
        count = len(readings)
        del readings
        influx_server = InfluxDB(data_dir=Path(tmp) / "influxdb", port=free_port(), rpc_port=free_port())
        influx_server.start()
        try:
            password = "bench-" + os.urandom(6).hex()
            influx_server.ensure_admin(ADMIN, password)
            base = InfluxSettings(url=influx_server.base_url, username=ADMIN, password=password)
            plan = Plan.bounded(PIPELINES, T0, end)
            runs = {
                "cold": ("`pipeline run`, cold (JSON, writing the Parquet copies)", send),
                "warm": ("`pipeline run`, warm (Parquet)", capturing),
                "compute": ("`pipeline run`, warm, compute only (no InfluxDB)", acknowledged),
            }
            for name, (label, sender) in runs.items():
                influx = dataclasses.replace(base, db=f"bench_{name}")
                bootstrap(influx)
                write_to_influx._WritePoints._send = sender  # type: ignore[method-assign]
                started = time.perf_counter()
                points = sum(run_plan(p, settings, registry, [], influx).points_written for p in slices(plan))
                rows.append((label, time.perf_counter() - started, points))
                write_to_influx._WritePoints._send = send  # type: ignore[method-assign]
                print(f"{name}: {rows[-1][1]:.1f} s, {points:,} points", file=sys.stderr)
            for connections in (1, 2):
                influx = dataclasses.replace(base, db=f"bench_ceiling_{connections}")
                bootstrap(influx)
                started = time.perf_counter()
                post_plain(influx, captured, rp=influx.rollup_rp, connections=connections)
                label = f"ceiling: the same points pre-encoded, POSTed on {connections} connection(s)"
                rows.append((label, time.perf_counter() - started, rows[1][2]))
                time.sleep(1.0)
        finally:
            influx_server.stop()
    ceiling = min(seconds for label, seconds, _ in rows if label.startswith("ceiling"))
    print(f"\n{args.hours} h of the pilot fleet: {count:,} readings in {segments} segments, {os.cpu_count()} cores\n")
    print("| run | s | points | readings/s | ceiling / run |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, points in rows:
        rate = "-" if label.startswith("ceiling") else f"{count / seconds:,.0f}"
        print(f"| {label} | {seconds:.1f} | {points:,} | {rate} | {ceiling / seconds:.2f} |")
    print(f"\ncommand: .venv/bin/python -m bench.backfill {' '.join(argv or sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
