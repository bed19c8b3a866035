"""ReadSpool: closed segments only, the time range, bad lines skipped and counted, the Parquet copy."""

from __future__ import annotations

import random
from pathlib import Path

import apache_beam as beam
import msgspec
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from pipelines.batch import ReadingBatch
from pipelines.columns import SegmentDecoder, cache_path, load_segment, metrics_by_kind
from pipelines.read_spool import ReadSpool
from sensors.reading import decode_reading, encode_reading
from sensors.registry import Registry
from sensors.spool import OPEN_SUFFIX, READINGS, closed_segments, segment_name
from tests.pipelines.conftest import batch_pipeline
from tests.pipelines.spooldata import HOUR, MINUTE, T0, fleet_readings, reading, write_segment


def identities(batch: ReadingBatch) -> list[tuple[str, str, int]]:
    return [
        (batch.kind, batch.series[s].sensor_id, t)
        for s, t in zip(batch.sensor.tolist(), batch.ts.tolist(), strict=True)
    ]


def test_reads_closed_segments_in_range_only(registry: Registry, tmp_path: Path) -> None:
    aq, wx = registry.sensors["pkt-aq-001"], registry.sensors["pkt-wx-001"]
    spool = tmp_path / "spool"
    write_segment(spool, 1, [reading(aq, T0 - MINUTE, {"pm25": 1.0}), reading(wx, T0, {"temperature": 30.0})])
    write_segment(spool, 2, [reading(aq, T0 + HOUR, {"pm25": 2.0})], stream="ingest-2")
    write_segment(spool, 3, [reading(aq, T0 + 30 * MINUTE, {"pm25": 3.0})])
    # A segment still being appended, and one renamed before its metadata exists: never read.
    (spool / "ingest-1" / segment_name(READINGS, 4, OPEN_SUFFIX)).write_bytes(
        encode_reading(reading(aq, T0 + MINUTE, {"pm25": 4.0}))
    )
    (spool / "ingest-1" / segment_name(READINGS, 5, ".seg")).write_bytes(
        encode_reading(reading(aq, T0 + 2 * MINUTE, {"pm25": 5.0}))
    )
    with batch_pipeline() as p:
        found = p | ReadSpool(spool, registry, T0, T0 + HOUR) | beam.FlatMap(identities)
        assert_that(found, equal_to([("weather", "pkt-wx-001", T0), ("air_quality", "pkt-aq-001", T0 + 30 * MINUTE)]))


def test_kinds_filter_and_segments_without_wanted_kinds_are_not_opened(registry: Registry, tmp_path: Path) -> None:
    aq, wx = registry.sensors["pkt-aq-001"], registry.sensors["pkt-wx-001"]
    spool = tmp_path / "spool"
    write_segment(spool, 1, [reading(wx, T0, {"temperature": 30.0})])
    write_segment(spool, 2, [reading(aq, T0, {"pm25": 1.0}), reading(wx, T0 + 1, {"humidity": 80.0})])
    transform = ReadSpool(spool, registry, kinds={"air_quality"})
    assert [s.seq for s in transform.segments] == [2]
    with batch_pipeline() as p:
        found = p | transform | beam.FlatMap(identities)
        assert_that(found, equal_to([("air_quality", "pkt-aq-001", T0)]))


def test_corrupt_lines_are_skipped_and_counted(registry: Registry, tmp_path: Path) -> None:
    aq = registry.sensors["pkt-aq-001"]
    spool = tmp_path / "spool"
    info = write_segment(spool, 1, [reading(aq, T0 + i * MINUTE, {"pm25": float(i)}) for i in range(5)])
    lines = info.path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"pm25":1.0', b'"pm25":9.0')  # checksum no longer matches
    lines[3] = lines[3][:20] + b"\n"  # torn
    info.path.write_bytes(b"".join(lines))
    pipeline = batch_pipeline()
    read = ReadSpool(spool, registry)
    found = pipeline | read | beam.FlatMap(lambda b: b.values[:, 0].tolist())
    assert_that(found, equal_to([0.0, 2.0, 4.0]))
    assert_that(read.invalid, equal_to([f"{info.path}:2", f"{info.path}:4"]), label="CheckInvalid")
    result = pipeline.run()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    assert counters["corrupt_lines"] == 2
    assert counters["readings"] == 3


def test_decoder_agrees_with_the_spool_record_format(registry: Registry) -> None:
    """Every field the batch keeps is what sensors.reading decodes from the same lines."""
    rng = random.Random(7)
    sensors = registry.sensors_of(city="chiang-mai")[::20]
    readings = fleet_readings(registry, sensors, T0, T0 + 10 * MINUTE, rng)
    lines = [encode_reading(r) for r in readings]
    decoded = SegmentDecoder(metrics_by_kind(registry)).decode(b"".join(lines))
    assert decoded.corrupt == 0
    got = {}
    for batch in decoded.batches:
        for i in range(len(batch)):
            series = batch.series[int(batch.sensor[i])]
            values = {m: v for m, v in zip(batch.metrics, batch.values[i].tolist(), strict=True) if v == v}
            got[(series.sensor_id, int(batch.ts[i]))] = (batch.kind, tuple(series), int(batch.received[i]), values)
    want = {}
    for line in lines:
        r = decode_reading(line)
        places = (r.super_cluster, r.city, r.district, r.site, r.sensor_id, r.vendor)
        want[(r.sensor_id, r.ts)] = (r.kind, places, r.received, r.values)
    assert got == want


@pytest.mark.parametrize("change", ["none", "segment"])
def test_parquet_copy_is_used_and_refreshed_when_its_segment_changed(
    registry: Registry, tmp_path: Path, change: str
) -> None:
    rng = random.Random(3)
    readings = fleet_readings(registry, registry.sensors_of(city="phuket")[::10], T0, T0 + 5 * MINUTE, rng)
    # Half of them numbered (`seq`, up to the contract's 2^63-1), half without: both survive the copy.
    readings = [msgspec.structs.replace(r, seq=2**63 - 1 - i) if i % 2 else r for i, r in enumerate(readings)]
    spool, cache = tmp_path / "spool", tmp_path / "cache"
    write_segment(spool, 1, readings)
    [info] = closed_segments(spool)
    decoder = SegmentDecoder(metrics_by_kind(registry))
    first = load_segment(info, decoder, cache)
    assert not first.from_cache and cache_path(cache, info).exists()
    if change == "segment":  # the segment was replaced (e.g. restored from a backup): the copy no longer fits
        write_segment(spool, 1, readings[:-1])
        [info] = closed_segments(spool)
    again = load_segment(info, decoder, cache)
    assert again.from_cache is (change == "none")
    fresh = load_segment(info, decoder, None)
    for a, b in zip(again.batches, fresh.batches, strict=True):
        assert (a.kind, a.metrics) == (b.kind, b.metrics)
        assert [a.series[i] for i in a.sensor] == [b.series[i] for i in b.sensor]
        assert np.array_equal(a.ts, b.ts) and np.array_equal(a.received, b.received)
        assert np.array_equal(a.values, b.values, equal_nan=True)
        assert np.array_equal(a.seq, b.seq)
    kept = sorted(int(n) for batch in again.batches for n in batch.seq)
    assert kept == sorted(-1 if r.seq is None else r.seq for r in readings[: sum(map(len, again.batches))])
