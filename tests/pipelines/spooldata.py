"""Closed spool segments for pipeline tests, written the way ingest closes them (sensors/spool.py).

A segment is appended as `.open`, its metadata is written, then it is renamed to
`.seg`; the readings are made from registry sensors so their places are real.
"""

from __future__ import annotations

import collections
import os
import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec

from pipelines.batch import ReadingBatch
from pipelines.columns import SegmentDecoder, metrics_by_kind
from sensors.reading import Reading, encode_reading
from sensors.registry import Registry, Sensor
from sensors.spool import CLOSED_SUFFIX, OPEN_SUFFIX, READINGS, SegmentInfo, read_meta, segment_name, write_meta

T0 = 1_764_028_800_000  # 2025-11-25T00:00:00Z, a whole day
MINUTE = 60_000
HOUR = 3_600_000


def reading(sensor: Sensor, ts: int, values: dict[str, float], received: int | None = None) -> Reading:
    return sensor.reading(ts, values, received=ts + 500 if received is None else received)


class ReadingBefore(msgspec.Struct, kw_only=True):
    """A reading record in the field order of spools written before the sensor context came first
    (`sensors.reading`): `ts` and `values` after `kind`."""

    sensor_id: str
    kind: str
    ts: int
    values: dict[str, float]
    vendor: str
    super_cluster: str
    city: str
    district: str
    site: str
    seq: int | None = None
    received: int = 0


def record_before(reading: Reading) -> bytes:
    """The JSON of a reading's record as ingest wrote it before (`ReadingBefore`)."""
    return msgspec.json.encode(ReadingBefore(**msgspec.structs.asdict(reading)))


def line_before(reading: Reading) -> bytes:
    """A reading's framed spool line as ingest wrote it before."""
    body = record_before(reading)
    return b"%08x %s\n" % (zlib.crc32(body), body)


def write_segment(
    root: Path,
    seq: int,
    readings: Sequence[Reading],
    stream: str = "ingest-1",
    encode: Callable[[Reading], bytes] = encode_reading,
) -> SegmentInfo:
    """Write `readings` as closed segment `seq` of `stream` under spool `root`, following the closing protocol
    (`encode`: each reading's spool line)."""
    folder = root / stream
    folder.mkdir(parents=True, exist_ok=True)
    growing = folder / segment_name(READINGS, seq, OPEN_SUFFIX)
    closed = folder / segment_name(READINGS, seq, CLOSED_SUFFIX)
    data = b"".join(encode(r) for r in readings)
    with open(growing, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    info = SegmentInfo(
        stream=stream,
        record_type=READINGS,
        seq=seq,
        count=len(readings),
        bytes=len(data),
        min_ts=min((r.ts for r in readings), default=None),
        max_ts=max((r.ts for r in readings), default=None),
        closed_at=max((r.received for r in readings), default=0),
        kinds=dict(collections.Counter(r.kind for r in readings)),
    )
    write_meta(info, closed)
    os.replace(growing, closed)
    return read_meta(closed)


def write_segments(root: Path, readings: Sequence[Reading], per_segment: int, stream: str = "ingest-1") -> int:
    """Write readings in order as consecutive segments of at most `per_segment`; returns how many."""
    count = 0
    for seq, start in enumerate(range(0, len(readings), per_segment), start=1):
        write_segment(root, seq, readings[start : start + per_segment], stream)
        count += 1
    return count


def fleet_readings(
    registry: Registry,
    sensors: Iterable[Sensor],
    start_ms: int,
    end_ms: int,
    rng: random.Random | None,
    *,
    drop: float = 0.0,
) -> list[Reading]:
    """A reading per sensor every `interval_s` of its kind in [start_ms, end_ms), in time order.

    Values are random within a plausible part of each metric's range; a fraction `drop`
    of readings is left out, and optional metrics are sometimes missing. With `rng` None each
    sensor draws from a generator seeded with its id, so its readings are the same whichever
    fleet it is generated with (a pilot sensor in the 10x registry reads as in the pilot).
    """
    out = []
    for sensor in sensors:
        kind = registry.kinds[sensor.kind]
        draw = random.Random(sensor.id) if rng is None else rng
        step = kind.interval_s * 1000
        jitter = draw.randrange(0, min(step, 30_000))
        for ts in range(start_ms + jitter, end_ms, step):
            if draw.random() < drop:
                continue
            values = {}
            for metric in kind.metrics:
                if metric.required or draw.random() < 0.95:
                    span = min(metric.max - metric.min, 200.0)
                    values[metric.name] = round(metric.min + draw.random() * span * 0.5, 3)
            if values:
                out.append(reading(sensor, ts, values))
    out.sort(key=lambda r: (r.ts, r.sensor_id))
    return out


def batches_of(readings: Sequence[Reading], registry: Registry) -> list[ReadingBatch]:
    """The batches ReadSpool would make of these readings as one segment (through the real decoder)."""
    decoder = SegmentDecoder(metrics_by_kind(registry))
    return decoder.decode(b"".join(encode_reading(r) for r in readings)).batches
