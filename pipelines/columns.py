"""Closed spool segments as columns: the JSON-lines decoder and a Parquet copy of each segment.

A closed segment (`sensors.spool`) holds one checksummed JSON reading per line.
Decoding it costs about 2-3 us per reading (checksum, msgspec into a struct,
then numpy columns), which is most of a rollup's time (docs/pipelines.md).
Closed segments never change, so the first pipeline that reads one also writes
its columns as a Parquet file under the cache folder; every later run (a
backfill, the next follow cycle, the AQI's 24 h look-back) reads those at
numpy speed. The Parquet file is an ordinary table (one row per reading; tag
columns dictionary-encoded, `ts`/`received` as UTC timestamps, `seq` a
nullable integer, one nullable float column per metric), so DuckDB, pandas or
Spark can read it too. A copy whose recorded source (segment size and count,
the metrics, the copy's format) no longer matches is ignored and rewritten;
copies of segments that are gone are pruned.

Lines that do not verify are skipped and counted, never raised: a closed
segment was verified when ingest closed it, so this only happens on disk
damage, and the rest of the segment is still good.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.batch import NO_SEQ, ReadingBatch, Series, SeriesTable
from sensors.reading import verify_line
from sensors.registry import Registry
from sensors.spool import SegmentInfo
from storage.schema import SENSOR_TAGS

logger = logging.getLogger(__name__)

PARQUET_SUFFIX = ".parquet"
_FORMAT = "format=2"  # copies of an older format (before `seq`) are ignored and rewritten
_SOURCE_KEY = b"smartcity.segment"
_TAG_GETTER = attrgetter(*SENSOR_TAGS)
_KIND = attrgetter("kind")
_SEQ = attrgetter("seq")
_MS = pa.timestamp("ms", tz="UTC")


def metrics_by_kind(registry: Registry) -> dict[str, tuple[str, ...]]:
    """The metric columns of each kind, in registry order (the column order of every batch)."""
    return {kind.id: tuple(m.name for m in kind.metrics) for kind in registry.kinds.values()}


@dataclass
class Decoded:
    """What one segment gave: a batch per kind, and the lines skipped (1-based numbers) and why."""

    batches: list[ReadingBatch]
    bad_lines: list[int] = field(default_factory=list)
    unknown_kind: int = 0
    from_cache: bool = False

    @property
    def corrupt(self) -> int:
        return len(self.bad_lines)


class SegmentDecoder:
    """Decodes spool lines straight into per-kind columns.

    The record struct mirrors `sensors.reading.Reading` but decodes `values` into
    a struct of every registry metric (absent ones NaN), which msgspec fills
    faster than a dict, and columns are pulled out with C-level getters.
    """

    def __init__(self, metrics: Mapping[str, Sequence[str]]) -> None:
        self.metrics = {kind: tuple(names) for kind, names in metrics.items()}
        every = sorted({name for names in self.metrics.values() for name in names})
        values = msgspec.defstruct("Values", [(name, float, math.nan) for name in every], gc=False)
        record = msgspec.defstruct(
            "Record",
            [
                ("sensor_id", str),
                ("kind", str),
                ("ts", int),
                ("values", values),
                *[(tag, str) for tag in SENSOR_TAGS if tag != "sensor_id"],
                ("received", int, 0),
                ("seq", int | None, None),
            ],
            gc=False,
        )
        self._decode = msgspec.json.Decoder(record).decode

    def decode(self, data: bytes, where: str = "segment") -> Decoded:
        """Per-kind batches of the readings in `data` (the bytes of a segment); `where` names it in logs."""
        lines = data.splitlines()
        bodies, numbers, bad = self._verified(lines, where)
        try:
            records = list(map(self._decode, bodies))
        except msgspec.DecodeError:  # rare: find the bad lines one by one
            records = []
            for body, number in zip(bodies, numbers, strict=True):
                try:
                    records.append(self._decode(body))
                except msgspec.DecodeError as err:
                    bad.append(number)
                    logger.warning("%s:%s: skipped a record that does not decode: %s", where, number, err)
        kinds = list(map(_KIND, records))
        names = list(dict.fromkeys(kinds))
        result = Decoded([], bad_lines=sorted(bad))
        if len(names) > 1:
            code = {name: i for i, name in enumerate(names)}
            codes = np.fromiter(map(code.__getitem__, kinds), np.int32, len(kinds))
        for i, kind in sorted(enumerate(names), key=lambda item: item[1]):
            rows = records if len(names) == 1 else list(map(records.__getitem__, np.flatnonzero(codes == i).tolist()))
            if kind not in self.metrics:
                result.unknown_kind += len(rows)
                continue
            result.batches.append(self._columns(kind, rows))
        return result

    @staticmethod
    def _verified(lines: list[bytes], where: str) -> tuple[list[bytes], list[int], list[int]]:
        """The JSON bodies of the lines whose checksum verifies (`sensors.reading` framing), their line
        numbers, and the numbers of the lines that do not verify.

        Vectorised: the 8 hex digits of every line are decoded by numpy at once.
        """
        n = len(lines)
        bodies = [line[9:] for line in lines]
        heads = b"".join([line[:9] for line in lines])
        if len(heads) == 9 * n:
            digits = np.frombuffer(heads, np.uint8).reshape(n, 9)
            nibbles = np.where(digits[:, :8] >= 97, digits[:, :8] - 87, digits[:, :8] - 48).astype(np.uint32)
            expected = (nibbles << np.arange(28, -1, -4, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
            good = (digits[:, 8] == 32) & (nibbles < 16).all(axis=1)
            good &= np.fromiter(map(zlib.crc32, bodies), np.uint32, n) == expected
        else:  # a line shorter than its frame: check each
            good = np.array([len(line) > 9 and verify_line(line + b"\n") for line in lines], dtype=bool)
        if good.all():
            return bodies, list(range(1, n + 1)), []
        bad = (np.flatnonzero(~good) + 1).tolist()
        for number in bad[:3]:
            logger.warning("%s:%s: skipped a line whose checksum does not verify", where, number)
        kept = np.flatnonzero(good)
        return [bodies[i] for i in kept.tolist()], (kept + 1).tolist(), bad

    def _columns(self, kind: str, rows: list[msgspec.Struct]) -> ReadingBatch:
        n = len(rows)
        tags = list(map(_TAG_GETTER, rows))
        index = {t: i for i, t in enumerate(sorted(dict.fromkeys(tags)))}  # tables are sorted (see batch.py)
        sensor = np.fromiter(map(index.__getitem__, tags), np.int32, n)
        metrics = self.metrics[kind]
        values = np.empty((n, len(metrics)))
        value_structs = list(map(attrgetter("values"), rows))
        for j, name in enumerate(metrics):
            values[:, j] = np.fromiter(map(attrgetter(name), value_structs), np.float64, n)
        return ReadingBatch(
            kind,
            metrics,
            SeriesTable(tuple(Series(*tags) for tags in index)),
            sensor,
            np.fromiter(map(attrgetter("ts"), rows), np.int64, n),
            np.fromiter(map(attrgetter("received"), rows), np.int64, n),
            values,
            np.fromiter((NO_SEQ if s is None else s for s in map(_SEQ, rows)), np.int64, n),
        )


def cache_path(cache_dir: Path, segment: SegmentInfo) -> Path:
    return cache_dir / segment.stream / (segment.path.name + PARQUET_SUFFIX)


def _source(segment: SegmentInfo, metrics: Mapping[str, Sequence[str]]) -> bytes:
    """What a copy was made from: the segment, and the registry metrics it was decoded with."""
    columns = zlib.crc32(repr(sorted((k, tuple(v)) for k, v in metrics.items())).encode())
    name = f"{segment.stream}/{segment.path.name}"
    return f"{name} count={segment.count} bytes={segment.bytes} metrics={columns:08x} {_FORMAT}".encode()


def _to_table(batches: Sequence[ReadingBatch], source: bytes) -> pa.Table:
    every = sorted({name for b in batches for name in b.metrics})
    columns: dict[str, list[pa.Array]] = {name: [] for name in ("kind", *SENSOR_TAGS, "ts", "received", "seq", *every)}
    for batch in batches:
        n = len(batch)
        columns["kind"].append(pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([batch.kind])))
        for position, tag in enumerate(SENSOR_TAGS):
            names = sorted({s[position] for s in batch.series})
            code = {name: i for i, name in enumerate(names)}
            per_series = np.fromiter((code[s[position]] for s in batch.series), np.int32, len(batch.series))
            columns[tag].append(pa.DictionaryArray.from_arrays(per_series[batch.sensor], pa.array(names, pa.string())))
        columns["ts"].append(pa.array(batch.ts, _MS))
        columns["received"].append(pa.array(batch.received, _MS))
        columns["seq"].append(pa.array(batch.seq, pa.int64(), mask=batch.seq == NO_SEQ))
        for name in every:
            if name in batch.metrics:
                column = batch.values[:, batch.metrics.index(name)]
                columns[name].append(pa.array(column, pa.float64(), mask=np.isnan(column)))
            else:
                columns[name].append(pa.nulls(n, pa.float64()))
    arrays = {name: pa.chunked_array(parts) for name, parts in columns.items()}
    arrays = {name: a.unify_dictionaries() if pa.types.is_dictionary(a.type) else a for name, a in arrays.items()}
    return pa.table(arrays).replace_schema_metadata({_SOURCE_KEY: source})


def write_parquet(
    batches: Sequence[ReadingBatch], path: Path, segment: SegmentInfo, metrics: Mapping[str, Sequence[str]]
) -> None:
    """Write the columns of `segment` atomically (temp file, rename); readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        table = _to_table(batches, _source(segment, metrics))
        # Dictionary pages only for the tag columns: on float columns they cost 3x the write time for nothing.
        pq.write_table(table, tmp, compression="snappy", use_dictionary=["kind", *SENSOR_TAGS], row_group_size=1 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_parquet(path: Path, segment: SegmentInfo, metrics: Mapping[str, Sequence[str]]) -> list[ReadingBatch] | None:
    """The batches cached for `segment`, or None if there is no valid copy."""
    try:
        parquet = pq.ParquetFile(path)
        if (parquet.schema_arrow.metadata or {}).get(_SOURCE_KEY) != _source(segment, metrics):
            return None
        table = parquet.read()
    except (OSError, pa.ArrowException) as err:
        logger.warning("%s: ignoring an unreadable column copy: %s", path, err)
        return None
    batches = []
    kinds = table.column("kind").combine_chunks()
    codes = kinds.indices.to_numpy(zero_copy_only=False)
    for code, kind in enumerate(kinds.dictionary.to_pylist()):
        rows = np.flatnonzero(codes == code)
        if not len(rows) or kind not in metrics:
            continue
        # A copy is written kind by kind, so a kind's rows are one run: a slice costs no copy.
        contiguous = rows[-1] - rows[0] + 1 == len(rows)
        part = table.slice(int(rows[0]), len(rows)) if contiguous else table.take(pa.array(rows))
        batches.append(_from_table(kind, part, tuple(metrics[kind])))
    return batches


def _from_table(kind: str, table: pa.Table, metrics: tuple[str, ...]) -> ReadingBatch:
    n = table.num_rows
    radix = np.zeros(n, np.int64)
    dictionaries = []
    for tag in SENSOR_TAGS:
        column = table.column(tag).combine_chunks()
        size = len(column.dictionary)
        radix = radix * size + column.indices.to_numpy(zero_copy_only=False)
        dictionaries.append((column.dictionary.to_pylist(), size))
    keys, sensor = np.unique(radix, return_inverse=True)
    tags = []  # per tag, the value of each distinct series (the radix taken apart, last tag first)
    for names, size in reversed(dictionaries):
        keys, code = np.divmod(keys, size)
        tags.append([names[i] for i in code.tolist()])
    series = [Series(*row) for row in zip(*reversed(tags), strict=True)]
    order = sorted(range(len(series)), key=series.__getitem__)  # tables are sorted (see batch.py)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    series, sensor = [series[i] for i in order], rank[sensor]
    values = np.full((n, len(metrics)), np.nan)
    for j, name in enumerate(metrics):
        if name in table.column_names:
            values[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    return ReadingBatch(
        kind,
        metrics,
        SeriesTable(tuple(series)),
        sensor.astype(np.int32),
        table.column("ts").cast(pa.int64()).to_numpy(),
        table.column("received").cast(pa.int64()).to_numpy(),
        values,
        table.column("seq").fill_null(NO_SEQ).to_numpy(),
    )


def load_segment(segment: SegmentInfo, decoder: SegmentDecoder, cache_dir: Path | None = None) -> Decoded:
    """The readings of a closed segment as per-kind batches, from its Parquet copy when there is one."""
    if cache_dir is not None:
        path = cache_path(cache_dir, segment)
        if path.exists():
            cached = read_parquet(path, segment, decoder.metrics)
            if cached is not None:
                return Decoded(cached, from_cache=True)
    decoded = decoder.decode(segment.path.read_bytes(), str(segment.path))
    # Only a complete copy is worth keeping: a skipped line or kind would be missing for good.
    if cache_dir is not None and not decoded.corrupt and not decoded.unknown_kind and decoded.batches:
        try:
            write_parquet(decoded.batches, cache_path(cache_dir, segment), segment, decoder.metrics)
        except OSError as err:  # a cache that cannot be written only costs speed
            logger.warning("cannot write the column copy of %s: %s", segment.path, err)
    return decoded


def prune_cache(cache_dir: Path, segments: Sequence[SegmentInfo]) -> int:
    """Delete column copies whose segment is gone (e.g. removed by the spool's retention); returns how many."""
    keep = {cache_path(cache_dir, s) for s in segments}
    removed = 0
    if cache_dir.is_dir():
        for path in cache_dir.glob(f"*/*{PARQUET_SUFFIX}"):
            if path not in keep:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
