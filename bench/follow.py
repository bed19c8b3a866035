"""Follow cycle cost: points written per new reading, and cycle time, for N x the pilot fleet.

Starts its own InfluxDB 1.x (deploy.servers, auth on, free ports, temp dir) and a spool
holding the last `--backlog-min` minutes of every registry sensor at its kind's interval
(the generator of tests/pipelines/spooldata.py), takes that backlog in one follow cycle
(which also reads the AQI's day of look-back once and saves its hourly means), then adds
`--steps` segments of `--step-min` live minutes each and takes each in one cycle, on the
real clock. Prints, per live cycle, the new readings, the points written, points per new
reading and the cycle's time (a cycle also pays ~2 s of Beam start-up), and the command.

EXAMPLES
    .venv/bin/python -m bench.follow
    .venv/bin/python -m bench.follow --backlog-min 50 --step-min 1 --steps 3
    .venv/bin/python -m bench.follow --fleet 100 --backlog-min 10 --steps 2 --profile /tmp/cycle.prof
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import logging
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from deploy.servers import InfluxDB, free_port
from pipelines.run import RunReport, follow
from pipelines.settings import PipelineSettings
from sensors.registry import default_registry
from sensors.registry.scaled import write_scaled_registry
from storage.bootstrap import bootstrap
from storage.settings import InfluxSettings
from tests.pipelines.spooldata import MINUTE, fleet_readings, write_segment

ADMIN = "bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog-min", type=int, default=50, help="minutes in the spool before the live steps")
    parser.add_argument("--step-min", type=int, default=1, help="live minutes per step (one segment, one cycle)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fleet", type=int, default=1, help="N x the pilot fleet (sensors/registry/scaled.py)")
    parser.add_argument("--profile", type=Path, help="cProfile the last live cycle into this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    scratch = tempfile.TemporaryDirectory(prefix="smartcity-bench-registry-")
    registry = default_registry() if args.fleet == 1 else write_scaled_registry(Path(scratch.name) / "r", args.fleet)
    live = args.steps * args.step_min * MINUTE
    end = int(time.time() * 1000) // MINUTE * MINUTE
    start = end - live - args.backlog_min * MINUTE
    readings = fleet_readings(registry, registry.sensors.values(), start, end, random.Random(18))
    cuts = [end - live + i * args.step_min * MINUTE for i in range(args.steps + 1)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="smartcity-bench-") as tmp:
        influx_server = InfluxDB(data_dir=Path(tmp) / "influxdb", port=free_port(), rpc_port=free_port())
        influx_server.start()
        try:
            password = "bench-" + os.urandom(6).hex()
            influx_server.ensure_admin(ADMIN, password)
            influx = InfluxSettings(url=influx_server.base_url, username=ADMIN, password=password, db="bench_follow")
            bootstrap(influx)
            settings = PipelineSettings(home=Path(tmp) / "home", poll_interval_s=0.1)
            spool = settings.spool_root

            def cycle() -> tuple[list[RunReport], float]:
                stop, reports = threading.Event(), []

                def record(report: RunReport) -> None:
                    reports.append(report)
                    stop.set()

                started = time.perf_counter()
                follow(settings, registry, [], influx, stop=stop, on_report=record)
                return reports, time.perf_counter() - started

            def profiled_cycle() -> tuple[list[RunReport], float]:
                with cProfile.Profile() as profile:
                    out = cycle()
                profile.dump_stats(args.profile)
                return out

            backlog = [r for r in readings if r.ts < cuts[0]]
            write_segment(spool, 1, backlog)
            reports, seconds = cycle()
            points = sum(r.points_written for r in reports)
            print(f"backlog: {len(backlog):,} readings, {points:,} points, {seconds:.1f} s", file=sys.stderr)
            for seq, (lo, hi) in enumerate(itertools.pairwise(cuts), start=2):
                new = [r for r in readings if lo <= r.ts < hi]
                write_segment(spool, seq, new)
                last = seq == len(cuts)
                reports, seconds = profiled_cycle() if args.profile and last else cycle()
                points = sum(r.points_written for r in reports)
                rows.append((len(new), points, seconds))
        finally:
            influx_server.stop()
    scratch.cleanup()
    print(f"{args.fleet} x the pilot fleet, {len(registry.sensors):,} sensors, live steps of {args.step_min} min\n")
    print("| live cycle | new readings | points written | points per new reading | cycle s |")
    print("|---:|---:|---:|---:|---:|")
    for i, (n, points, seconds) in enumerate(rows, start=1):
        print(f"| {i} | {n:,} | {points:,} | {points / n:.2f} | {seconds:.1f} |")
    print(f"\ncommand: .venv/bin/python -m bench.follow {' '.join(argv or sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
