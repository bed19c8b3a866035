"""What a rejection costs on disk, and what ingest's conflict index costs in memory and time.

1. Bytes per kept rejection: the record the old code kept (the payload's first 4 KiB, base64) against
   the one kept now (the first 512 bytes, its length and SHA-256), for a 16 KiB payload (the contract's
   largest) and a 1.5 KiB one, as `encode_rejection` writes them.
2. The conflict index (`ingest.history.History`) filled with the acceptance window's readings of the
   pilot fleet (610 sensors, 7.7 readings/s: 2.0 M readings in 72 h) and of `--scale` times it:
   table bytes, bytes per entry, the time of a bulk load (the start-up rebuild minus reading the spool)
   and of one `admit()` on the live path. 30x is computed from the same sizing rule, not allocated
   (it would take 2 GiB of a shared test machine).
3. The start-up rebuild from real spool segments (`--rebuild` readings written with `StreamWriter`).

Prints markdown for docs/reliability.md.

EXAMPLES
    .venv/bin/python -m bench.rejects_history
    .venv/bin/python -m bench.rejects_history --scale 3 --rebuild 200000
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path

from ingest.history import MAX_LOAD, History
from ingest.spool import StreamWriter
from sensors.contract import RejectCode, Rejected, rejection_record
from sensors.reading import Reading, Rejection, encode_rejection
from sensors.registry import default_registry
from sensors.simulator import natural_rate, select_sensors

WINDOW_MS = 72 * 3_600_000
TOPIC = "smartcity/v1/phuket/air_quality/pkt-aq-001"


def reject_bytes() -> list[tuple[str, int, int]]:
    registry = default_registry()
    sensor = registry.sensors["pkt-aq-001"]
    rejected = Rejected(RejectCode.OUT_OF_RANGE, "pm25: -3 ug/m3 is outside 0..1000", sensor)
    rows = []
    for label, size in (("16 KiB payload", 16 * 1024), ("1.5 KiB payload", 1536)):
        payload = (b'{"ts":1796000000000,"values":{"pm25":-3},"pad":"' + b"x" * size)[:size]
        new = rejection_record(TOPIC, payload, rejected, 1_796_000_000_000)
        old = Rejection(code=new.code, detail=new.detail, topic=TOPIC, received_at=new.received_at,
                        payload_b64=base64.b64encode(payload[:4096]).decode(), sensor_id=new.sensor_id,
                        vendor=new.vendor)  # fmt: skip
        rows.append((label, len(encode_rejection(old)), len(encode_rejection(new))))
    return rows


def reading(sensor: str, ts: int, value: float) -> Reading:
    return Reading(sensor_id=sensor, kind="air_quality", ts=ts, values={"pm25": value, "pm10": value + 1},
                   vendor="v", super_cluster="andaman", city="phuket", district="d", site="s")  # fmt: skip


def slots_for(entries: int) -> int:
    """The table `History` settles at for `entries` live entries (its sizing rule)."""
    slots = 4096
    while entries > MAX_LOAD * slots:  # a resize at MAX_LOAD doubles it (to RESIZE_LOAD)
        slots *= 2
    return slots


def index_figures(sensors: int, per_window: int) -> tuple[int, float, float, float]:
    now = int(time.time() * 1000)
    per_sensor = per_window // sensors
    step = WINDOW_MS // per_sensor
    ids = [f"s-{n:05d}" for n in range(sensors)]
    history = History(WINDOW_MS)
    entries = ((ids[n % sensors], now - (n // sensors) * step, float(n % 997)) for n in range(per_window))
    started = time.perf_counter()
    history.load(((s, ts, {"pm25": v, "pm10": v + 1}) for s, ts, v in entries), now)
    load_s = time.perf_counter() - started
    live = [reading(ids[n % sensors], now + 1000 + n // sensors, float(n)) for n in range(20_000)]
    started = time.perf_counter()
    for one in live:
        history.admit([one], now)
    admit_us = (time.perf_counter() - started) / len(live) * 1e6
    return history.nbytes, history.nbytes / len(history), load_s, admit_us


def rebuild_seconds(readings: int, sensors: int) -> float:
    now = int(time.time() * 1000)
    with tempfile.TemporaryDirectory() as folder:
        stream = Path(folder) / "s"
        writer: StreamWriter[int] = StreamWriter(stream, segment_max_bytes=64 * 2**20, segment_max_age_s=3600)
        for n in range(readings):
            writer.append_readings([reading(f"s-{n % sensors:05d}", now - n // sensors * 60_000, float(n))], n)
            if n % 10_000 == 0:
                writer.commit()
        writer.close()
        started = time.perf_counter()
        History(WINDOW_MS).rebuild(stream, now)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="Also measure the index at this multiple of the pilot."
    )
    parser.add_argument("--rebuild", type=int, default=200_000, help="Readings for the rebuild-from-spool timing.")
    args = parser.parse_args()
    print("| rejected message | bytes kept before | bytes kept now |\n|---|--:|--:|")
    for label, old, new in reject_bytes():
        print(f"| {label} | {old:,} | {new:,} |")
    registry = default_registry()
    sensors = select_sensors(registry)
    rate = natural_rate(registry, sensors)
    pilot = int(rate * WINDOW_MS / 1000)
    print(f"\npilot: {len(sensors)} sensors, {rate:.1f} readings/s, {pilot:,} readings in 72 h\n")
    print("| fleet | entries | table | bytes/entry | bulk load | admit() |\n|---|--:|--:|--:|--:|--:|")
    scales = sorted({1.0, args.scale})
    for scale in scales:
        nbytes, per_entry, load_s, admit_us = index_figures(int(len(sensors) * scale), int(pilot * scale))
        print(f"| {scale:g}x (measured) | {int(pilot * scale):,} | {nbytes / 2**20:,.0f} MiB | {per_entry:.0f} | "
              f"{load_s:.1f} s | {admit_us:.1f} µs |")  # fmt: skip
    entries = pilot * 30
    table = slots_for(entries) * 16
    print(f"| 30x (sizing rule) | {entries:,} | {table / 2**20:,.0f} MiB | {table / entries:.0f} | | |")
    seconds = rebuild_seconds(args.rebuild, len(sensors))
    each = seconds / args.rebuild
    print(f"\nrebuild from the spool: {args.rebuild:,} readings in {seconds:.2f} s "
          f"({each * 1e6:.1f} µs each; the pilot's 72 h: {each * pilot:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
