"""Storage writer throughput: 1M raw points through `storage.writer` vs. the plain-HTTP ceiling.

Starts its own InfluxDB 1.x (deploy.servers, auth on, free ports, temp dir),
builds a realistic fleet (2,000 sensors in Phuket and Chiang Mai, kinds with
2-6 metrics, one reading a minute) and times, each into a fresh database:

- ceiling: the same line protocol, pre-encoded, POSTed in batches over one
  keep-alive `http.client` connection (no gzip, no retries, no bookkeeping);
- the confirmed writer on those pre-encoded bytes (`Writer.write_lines`);
- the confirmed writer fed `Point`s (encoding, and sending from its sender thread), without and
  with gzip;
- encoding alone.

Prints a markdown table for docs/benchmarks.md and the command that made it.

EXAMPLES
    .venv/bin/python -m bench.storage_write
    .venv/bin/python -m bench.storage_write --points 200000 --batch-size 5000
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gc
import http.client
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import msgspec

from deploy.servers import InfluxDB, free_port
from sensors.reading import Reading
from storage.bootstrap import bootstrap
from storage.health import ping
from storage.line_protocol import Encoder, Point
from storage.query import QueryClient, ident
from storage.schema import raw_point
from storage.settings import InfluxSettings
from storage.writer import make_writer

KINDS = {
    "air_quality": ("pm25", "pm10", "o3", "co", "no2", "so2"),
    "weather": ("temperature", "humidity", "rain_mm", "wind_speed"),
    "water_level": ("level_m", "flow_m3s"),
    "noise": ("laeq", "lmax", "lmin"),
    "parking": ("occupied", "free"),
    "energy": ("power_kw", "energy_kwh", "voltage", "current", "power_factor"),
}
CITIES: dict[str, dict[str, tuple[str, ...]]] = {
    "andaman": {"phuket": ("mueang-phuket", "kathu", "thalang")},
    "northern": {"chiang-mai": ("mueang-chiang-mai", "hang-dong", "san-sai", "mae-rim")},
}
VENDORS = ("siam-sense", "lanna-iot", "andaman-tech", "aircheck", "hydro-th")
SENSORS = 2_000
ADMIN = "admin"
CEILING = "plain HTTP, pre-encoded bytes (ceiling)"


def fleet_readings(n: int, seed: int = 7) -> list[Reading]:
    """`n` readings of a 2,000-sensor fleet, one a minute per sensor, ending an hour ago."""
    rng = random.Random(seed)
    districts = [(sc, city, d) for sc, cities in CITIES.items() for city, ds in cities.items() for d in ds]
    sensors = []
    for i in range(SENSORS):
        kind = list(KINDS)[i % len(KINDS)]
        super_cluster, city, district = districts[i % len(districts)]
        sensors.append(
            Reading(
                ts=0,
                values={},
                sensor_id=f"{city[:3]}-{kind[:2]}-{i:04d}",
                kind=kind,
                vendor=VENDORS[i % len(VENDORS)],
                super_cluster=super_cluster,
                city=city,
                district=district,
                site=f"{district}-site-{i % 37}",
            )
        )
    end_ms = (time.time_ns() // 1_000_000 // 60_000 - 60) * 60_000
    minutes = -(-n // SENSORS)
    readings: list[Reading] = []
    for minute in range(minutes):
        ts = end_ms - (minutes - minute) * 60_000
        for sensor in sensors:
            if len(readings) == n:
                break
            values = {m: round(rng.uniform(0, 150), 1) for m in KINDS[sensor.kind]}
            readings.append(msgspec.structs.replace(sensor, ts=ts + rng.randrange(0, 1000), values=values))
    return readings


def batches_of(data: list[bytes], size: int) -> list[bytes]:
    return [b"".join(data[i : i + size]) for i in range(0, len(data), size)]


def post_plain(settings: InfluxSettings, bodies: list[bytes], rp: str | None = None, connections: int = 1) -> None:
    """The ceiling: POST each body once, pre-encoded, over `connections` keep-alive connections in parallel."""
    url = urllib.parse.urlsplit(settings.url)
    query = urllib.parse.urlencode({"db": settings.db, "rp": rp or settings.raw_rp, "precision": "ms"})
    auth = "Basic " + base64.b64encode(f"{settings.username}:{settings.password}".encode()).decode()

    def send(part: list[bytes]) -> None:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=120)
        for body in part:
            conn.request("POST", f"/write?{query}", body=body, headers={"Authorization": auth})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 204:
                raise RuntimeError(f"plain POST got HTTP {resp.status}")
        conn.close()

    threads = [threading.Thread(target=send, args=(bodies[i::connections],)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def stored(settings: InfluxSettings) -> int:
    total = 0
    with QueryClient(settings) as client:
        for kind, metrics in KINDS.items():
            series = client.query("SELECT count({f}) FROM {m}", {"f": ident(metrics[0]), "m": ident("raw", kind)})
            total += int(series[0].values[0][1]) if series else 0
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args(argv)
    n = args.points

    print(f"building {n:,} readings and points ...", file=sys.stderr)
    readings = fleet_readings(n)
    points: list[Point] = [raw_point(r) for r in readings]
    del readings
    encoder = Encoder()
    lines = [line.encode() + b"\n" for line in (encoder.line(p) for p in points)]
    bodies = batches_of(lines, args.batch_size)
    size_mb = sum(map(len, bodies)) / 1e6
    del lines
    fields = sum(len(p.fields) for p in points) / n
    gc.collect()
    gc.freeze()  # the 1M points are long-lived: keep the cyclic GC from rescanning them in every run

    with tempfile.TemporaryDirectory(prefix="smartcity-bench-") as tmp:
        influx = InfluxDB(data_dir=Path(tmp) / "influxdb", port=free_port(), rpc_port=free_port())
        influx.start()
        try:
            password = "bench-" + os.urandom(6).hex()
            influx.ensure_admin(ADMIN, password)
            base = InfluxSettings(url=influx.base_url, username=ADMIN, password=password, batch_size=args.batch_size)
            version, _ = ping(base)
            times: dict[str, list[float]] = {}
            counter = iter(range(10_000))

            def run(label: str, body: Callable[[InfluxSettings], None], gzip: bool = False) -> None:
                settings = dataclasses.replace(base, db=f"bench_{next(counter)}", gzip=gzip)
                bootstrap(settings)
                started = time.perf_counter()
                body(settings)
                elapsed = time.perf_counter() - started
                count = stored(settings)
                if count != n:
                    raise RuntimeError(f"{label}: {count:,} of {n:,} points stored")
                with QueryClient(settings) as client:
                    client.execute("DROP DATABASE {db}", {"db": ident(settings.db)}, db="")
                times.setdefault(label, []).append(elapsed)
                print(f"{label}: {elapsed:.2f} s, {n / elapsed:,.0f} points/s", file=sys.stderr)
                time.sleep(2.0)  # let InfluxDB settle after the drop

            def lines_writer(settings: InfluxSettings) -> None:
                with make_writer(settings) as writer:
                    writer.write_lines(bodies, "ms")

            def confirmed(settings: InfluxSettings) -> None:
                with make_writer(settings) as writer:
                    writer.write(points)

            runs: list[tuple[str, Callable[[InfluxSettings], None], bool]] = [
                (CEILING, lambda s: post_plain(s, bodies), False),
                ("Writer.write_lines, pre-encoded bytes", lines_writer, False),
                ("Writer.write(points), confirmed", confirmed, False),
                ("Writer.write(points), confirmed, gzip", confirmed, True),
            ]
            # Interleaved rounds in a shuffled order, so that load from elsewhere and InfluxDB's own
            # background work (after the previous run's DROP DATABASE) hit every run alike.
            order = random.Random(1)
            for _ in range(args.repeat):
                for label, body, gzip in order.sample(runs, len(runs)):
                    run(label, body, gzip)
        finally:
            influx.stop()

    encoder = Encoder()
    started = time.perf_counter()
    for i in range(0, n, args.batch_size):
        encoder.encode(points[i : i + args.batch_size])
    encode_s = time.perf_counter() - started

    medians = {label: statistics.median(seconds) for label, seconds in times.items()}
    best = {label: min(seconds) for label, seconds in times.items()}
    command = "python -m bench.storage_write" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    print(
        f"\n`{command}`: {n:,} raw points ({fields:.1f} float fields and 6 tags each, {size_mb:.0f} MB of line "
        f"protocol, batches of {args.batch_size:,}); {args.repeat} interleaved rounds; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, InfluxDB {version}\n"
    )
    print("| run | median s | points/s (median) | of ceiling (median) | of ceiling (best) | all runs, s |")
    print("|---|---:|---:|---:|---:|---|")
    for label, _, _ in runs:
        seconds = medians[label]
        all_runs = ", ".join(f"{t:.2f}" for t in times[label])
        print(
            f"| {label} | {seconds:.2f} | {n / seconds:,.0f} | {medians[CEILING] / seconds:.2f} "
            f"| {best[CEILING] / best[label]:.2f} | {all_runs} |"
        )
    print(f"| encoding only (Encoder.encode, no HTTP) | {encode_s:.2f} | {n / encode_s:,.0f} | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
