"""Readings as columns: the element that flows through the pipelines.

Beam's local runners spend tens of microseconds on every element that crosses a
window and a grouping (docs/research/beam.md section 5: 40-130 us), so an element here
is never one reading. It is a `ReadingBatch`: the readings of one kind from one
spool segment, or from one window of it, as numpy columns. Windowing, grouping
and triggers then work per batch and per window, and the arithmetic is numpy.

A reading's places (super-cluster, city, district, site) and vendor are the ones
recorded with it at ingest (`sensors.reading.Reading`), so history keeps the
places that were true when it was measured. The batch stores them once per
sensor in `series` and refers to them by index. Series tables are always
sorted, so after `deduplicated()` the readings are in one canonical order
whatever order the parts arrived in: every sum is taken in the same order
and a re-run gives the same floating-point results to the last bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from storage.schema import SENSOR_TAGS

NO_SEQ = -1  # in `ReadingBatch.seq`: the reading came without a sequence number


class Series(NamedTuple):
    """A sensor with the places and vendor recorded with its readings (the raw measurement's tags)."""

    super_cluster: str
    city: str
    district: str
    site: str
    sensor_id: str
    vendor: str

    def tags(self) -> dict[str, str]:
        return dict(zip(SENSOR_TAGS, self, strict=True))


class PackedRows:
    """Rows of strings (all of one width) kept as one byte string, with a digest of the content.

    Beam serialises elements between stages; a few thousand small tuples per
    element cost more to pickle than all the numpy arithmetic on them. Packed,
    they pickle as one `bytes` and are parsed back only when their rows are
    needed. Equal content gives an equal digest in every process, so work done
    per table (e.g. mapping sensors to areas) is cached across windows.
    `row` builds each row (a named tuple class; default a plain tuple).
    """

    __slots__ = ("_items", "_size", "_text", "digest", "row", "width")

    def __init__(self, items: Sequence[Sequence[str]], width: int, row: Callable[..., Any] | None = None) -> None:
        self._items: tuple[Any, ...] | None = tuple(items)
        self._size, self.width, self.row = len(self._items), width, row or _strings
        text = _RECORD.join(_FIELD.join(s) for s in self._items)
        if text.count(_FIELD) != (width - 1) * self._size or text.count(_RECORD) != max(self._size - 1, 0):
            raise ValueError(f"rows must have {width} strings without the separators \\x1e or \\x1f")
        self._text = text.encode()
        self.digest = hashlib.blake2b(self._text, digest_size=16).digest()

    @classmethod
    def _restore(cls, text: bytes, size: int, width: int, row: Callable[..., Any], digest: bytes) -> PackedRows:
        table = cls.__new__(cls)
        table._items, table._text, table._size, table.width, table.row, table.digest = (
            None,
            text,
            size,
            width,
            row,
            digest,
        )
        return table

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return type(self)._restore, (self._text, self._size, self.width, self.row, self.digest)

    @property
    def items(self) -> tuple[Any, ...]:
        if self._items is None:
            records = self._text.decode().split(_RECORD) if self._size else []
            self._items = tuple(self.row(*record.split(_FIELD)) for record in records)
        return self._items

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackedRows) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


class SeriesTable(PackedRows):
    """The distinct series of a batch (`PackedRows` of `Series`)."""

    __slots__ = ()

    def __init__(self, items: Sequence[Series]) -> None:
        super().__init__(items, len(Series._fields), Series)

    def __iter__(self) -> Iterator[Series]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Series:
        return self.items[index]


_FIELD, _RECORD = "\x1f", "\x1e"


def _strings(*fields: str) -> tuple[str, ...]:
    return fields


@dataclass(frozen=True, eq=False)
class ReadingBatch:
    """Readings of one kind as columns; row i is one reading.

    `values[i, j]` is metric `metrics[j]` of reading i, NaN when the reading has no
    value for it (metrics may be optional). Times are UTC epoch milliseconds.
    """

    kind: str
    metrics: tuple[str, ...]
    series: SeriesTable
    sensor: np.ndarray  # int32, index into `series` (sorted: see below)
    ts: np.ndarray  # int64, event time
    received: np.ndarray  # int64, when ingest received it (breaks ties between duplicates)
    values: np.ndarray  # float64, shape (len, len(metrics))
    seq: np.ndarray  # int64, the sensor's message counter (`sensors.seq`), NO_SEQ where it sent none

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, index: np.ndarray | slice) -> ReadingBatch:
        """The readings at `index` (a boolean mask, positions or a slice), same series table."""
        return ReadingBatch(
            self.kind,
            self.metrics,
            self.series,
            self.sensor[index],
            self.ts[index],
            self.received[index],
            self.values[index],
            self.seq[index],
        )

    def between(self, start_ms: int | None, end_ms: int | None) -> ReadingBatch:
        """The readings with `start_ms <= ts < end_ms` (None: unbounded)."""
        if start_ms is None and end_ms is None:
            return self
        keep = np.ones(len(self), dtype=bool)
        if start_ms is not None:
            keep &= self.ts >= start_ms
        if end_ms is not None:
            keep &= self.ts < end_ms
        return self if keep.all() else self.take(keep)

    def windows(self, width_ms: int, offset_ms: int = 0) -> Iterator[tuple[int, ReadingBatch]]:
        """Split into fixed windows `[k * width + offset, ...)`: yields (window start ms, readings in it)."""
        if not len(self):
            return
        starts = (self.ts - offset_ms) // width_ms * width_ms + offset_ms
        first, last = int(starts.min()), int(starts.max())
        if first == last:
            yield first, self
            return
        order = np.argsort(starts, kind="stable")
        ordered = starts[order]
        bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(order)], strict=True):
            yield int(ordered[lo]), self.take(order[lo:hi])

    def select(self, metrics: Sequence[str]) -> ReadingBatch:
        """The same readings with `metrics` as columns, in that order (NaN for a metric the batch lacks)."""
        metrics = tuple(metrics)
        if metrics == self.metrics:
            return self
        values = np.full((len(self), len(metrics)), np.nan)
        for j, name in enumerate(metrics):
            if name in self.metrics:
                values[:, j] = self.values[:, self.metrics.index(name)]
        return ReadingBatch(self.kind, metrics, self.series, self.sensor, self.ts, self.received, values, self.seq)

    @classmethod
    def concat(cls, batches: Iterable[ReadingBatch]) -> ReadingBatch:
        """One batch of the readings of `batches` (one kind, same metrics) with one series table."""
        given = list(batches)
        if not given:
            raise ValueError("concat needs at least one batch")
        kind, metrics = given[0].kind, given[0].metrics
        for part in given:
            if part.kind != kind or part.metrics != metrics:
                raise ValueError(f"cannot concat {part.kind}{part.metrics} with {kind}{metrics}")
        parts = [b for b in given if len(b)]
        if not parts:
            return empty_batch(kind, metrics)
        if len(parts) == 1:
            return parts[0]
        if all(p.series == parts[0].series for p in parts):  # parts of one segment: no remapping
            table = parts[0].series
            sensors = [p.sensor for p in parts]
        else:
            table = SeriesTable(tuple(sorted({s for part in parts for s in part.series})))
            position = {s: i for i, s in enumerate(table)}
            sensors = []
            for part in parts:
                remap = np.fromiter((position[s] for s in part.series), dtype=np.int32, count=len(part.series))
                sensors.append(remap[part.sensor])
        return cls(
            kind,
            metrics,
            table,
            np.concatenate(sensors),
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.received for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.seq for p in parts]),
        )

    def deduplicated(self) -> ReadingBatch:
        """One reading per (sensor, ts), sorted by sensor then time.

        A reading's identity is (sensor_id, ts): a QoS 1 redelivery lands in the
        spool twice and must count once. Of duplicates, the one received last
        wins, as in the raw measurement where the later write replaces the earlier.
        A batch that already is (an hour of `GroupIntoHours`) is returned as it is, after one pass.
        """
        sensor, ts = self.sensor, self.ts
        step = sensor[1:].astype(np.int64) - sensor[:-1]
        if bool(np.all((step > 0) | ((step == 0) & (ts[1:] > ts[:-1])))):
            return self
        order = np.lexsort((self.received, self.ts, self.sensor))
        sensor, ts = self.sensor[order], self.ts[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = (sensor[1:] != sensor[:-1]) | (ts[1:] != ts[:-1])
        return self.take(order[last])

    def group_starts(self) -> np.ndarray:
        """Positions where a new sensor starts, for a batch sorted by sensor (e.g. `deduplicated()`)."""
        if not len(self):
            return np.zeros(0, dtype=np.intp)
        return np.flatnonzero(np.r_[True, self.sensor[1:] != self.sensor[:-1]])


def by_kind(parts: Iterable[ReadingBatch]) -> dict[str, ReadingBatch]:
    """The parts of a window, concatenated per kind (kinds in sorted order)."""
    grouped: dict[str, list[ReadingBatch]] = {}
    for part in parts:
        grouped.setdefault(part.kind, []).append(part)
    return {kind: ReadingBatch.concat(grouped[kind]) for kind in sorted(grouped)}


def empty_batch(kind: str, metrics: Sequence[str]) -> ReadingBatch:
    """A batch without readings (e.g. to make a window fire for an hour in which nothing arrived)."""
    return ReadingBatch(
        kind,
        tuple(metrics),
        SeriesTable(()),
        np.zeros(0, dtype=np.int32),
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.int64),
        np.zeros((0, len(metrics))),
        np.zeros(0, dtype=np.int64),
    )
