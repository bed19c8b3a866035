"""A quick drain of the default `smartcity ingest` alone: msg/s and CPU per message, for a change to ingest.

`make bench` (bench/compare.py) is the reference: several setups, the peer,
rounds, a quiet machine. This runs one of its drains, the default one-process
setup, over the same seeded stream with the same measurement (CPU of the
process tree from the connection to the last point in InfluxDB), `--rounds`
times, and prints each round and the median. Its own stack, like the bench.

EXAMPLES
    .venv/bin/python -m bench.ingest_cpu --messages 50000 --rounds 3
    .venv/bin/python -m bench.ingest_cpu --role consume     # the consumer alone (no raw writer)

With `--role consume` nothing reaches InfluxDB: the clock stops when the spool
holds a record of every message (each message of the stream is one reading or
one rejection).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.compare import (
    FAULTS,
    Ingest,
    Row,
    Stream,
    Usage,
    drain,
    forget_sessions,
    publish,
    replay_stream,
    usage,
    wait_idle,
)
from bench.ingest import Bench
from sensors.registry import default_registry

SPOOL_POLL_S = 0.05


def spooled_records(stream_dir: Path, sizes: dict[Path, int], lines: dict[Path, int]) -> int:
    """Lines in the stream's segments (readings and rejections), read on from where the last call stopped."""
    for path in stream_dir.glob("*-*.*"):
        if path.suffix not in (".open", ".seg"):
            continue
        try:
            with open(path, "rb") as f:
                f.seek(sizes.get(path.with_suffix(""), 0))
                data = f.read()
        except FileNotFoundError:
            continue  # renamed from .open to .seg meanwhile
        key = path.with_suffix("")  # the same segment, open or closed
        sizes[key] = sizes.get(key, 0) + len(data)
        lines[key] = lines.get(key, 0) + data.count(b"\n")
    return sum(lines.values())


def drain_to_spool(bench: Bench, consumer: Ingest, stream: Stream) -> Row:
    """A drain of a consume-only process: from its connection until the spool holds every message."""
    consumer.prepare()
    publish(bench, stream.messages)
    consumer.start()
    sizes: dict[Path, int] = {}
    lines: dict[Path, int] = {}
    try:
        consumer.wait_ready()
        connected, startup = time.monotonic(), usage(consumer.pids())
        stream_dir = consumer.home / "spool" / consumer.client_ids[0]
        while spooled_records(stream_dir, sizes, lines) < len(stream.messages):
            time.sleep(SPOOL_POLL_S)
        last = time.monotonic()
        used = usage(consumer.pids())
    finally:
        consumer.stop()
        forget_sessions(bench, consumer.client_ids)
    cpu = Usage(used.cpu_s - startup.cpu_s, used.rss_mib)
    return Row(consumer.label, 1, len(stream.messages) / (last - connected), cpu.cpu_s, cpu.rss_mib)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages in the drain stream (default 50,000)")
    parser.add_argument("--rounds", type=int, default=3, help="drains; the median is shown (default 3)")
    parser.add_argument("--role", default="all", choices=("all", "consume"), help="role of the process (all)")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    args = parser.parse_args(argv)
    registry = default_registry()
    stream = replay_stream(registry, args.messages, FAULTS, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="smartcity-bench-ingest-cpu-"))
    bench = Bench(workdir)
    rows = []
    try:
        for n in range(1, args.rounds + 1):
            settings = {"client_id": f"bench-cpu-{n}", "role": args.role}
            if args.role == "consume":  # every rejection kept, so the spool's record count tells the end
                settings["reject_store_per_s"] = "1000000"
            consumer = Ingest(bench, f"smartcity ingest --role {args.role}", f"drain_cpu_{n}", [settings])
            wait_idle(bench)
            if args.role == "consume":
                row = drain_to_spool(bench, consumer, stream)
            else:
                row = drain(bench, registry, consumer, stream)
            rows.append(row)
            print(
                f"round {n}: {row.rate:,.0f} msg/s, {1e6 * row.cpu_s / args.messages:.1f} us CPU/msg "
                f"({row.cpu_s:.1f} s), cores busy {row.cpu_s * row.rate / args.messages:.2f}, "
                f"peak RSS {row.rss_mib:.0f} MiB"
                + (f", lost {row.lost}, bad stored {row.bad_stored}" if row.lost is not None else ""),
                flush=True,
            )
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    rate = statistics.median(r.rate for r in rows)
    cpu_us = statistics.median(1e6 * r.cpu_s / args.messages for r in rows)
    print(f"median of {len(rows)}: {rate:,.0f} msg/s, {cpu_us:.1f} us CPU/msg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
