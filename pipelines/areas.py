"""The levels a figure is given at: each sensor, and the district, city and super-cluster around it.

Rollups and the AQI are written once per sensor and once per enclosing area
(`storage.schema.LEVELS`), with tags `level`, `area` and the enclosing places.
A sensor's areas are the places recorded with its readings (`Series`).

`Levels` maps a batch's series table to those rows once and then sums, takes
the minimum or the maximum of per-series arrays into per-row arrays with
sort-free `reduceat` calls; it is cached per series table because every
window of a segment shares the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from pipelines.batch import PackedRows, Series, SeriesTable
from storage.schema import LEVELS, ROLLUP_TAGS


class Area(NamedTuple):
    """One row of a rollup or AQI measurement: its tag values in `ROLLUP_TAGS` order ("" = no such tag)."""

    level: str
    area: str
    super_cluster: str
    city: str
    district: str


assert Area._fields == ROLLUP_TAGS, "Area rows are written as the tags of ROLLUP_TAGS"


def areas_of(series: Series) -> tuple[Area, ...]:
    """The sensor's own row and the rows of its district, city and super-cluster, in `LEVELS` order."""
    s = series
    return (
        Area("sensor", s.sensor_id, s.super_cluster, s.city, s.district),
        Area("district", s.district, s.super_cluster, s.city, s.district),
        Area("city", s.city, s.super_cluster, s.city, ""),
        Area("super_cluster", s.super_cluster, s.super_cluster, "", ""),
    )


class Levels:
    """The rows (every level) of a series table, and reductions from per-series to per-row arrays."""

    def __init__(self, table: Sequence[Series]) -> None:
        of = [areas_of(s) for s in table]
        self.rows: tuple[Area, ...] = tuple(sorted({a for areas in of for a in areas}, key=_row_order))
        self.packed = PackedRows(self.rows, len(ROLLUP_TAGS), Area)  # the tags of every row, shared by windows
        position = {area: i for i, area in enumerate(self.rows)}
        # member[i, level]: the row of series i at that level.
        self.member = np.array([[position[a] for a in areas] for areas in of], dtype=np.intp).reshape(
            len(table), len(LEVELS)
        )
        # Per level: series order grouping equal rows, where each group starts, and the group's row.
        self._groups = []
        for level in range(len(LEVELS)):
            order = np.argsort(self.member[:, level], kind="stable")
            ordered = self.member[order, level]
            starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else order
            self._groups.append((order, starts, ordered[starts]))

    def __len__(self) -> int:
        return len(self.rows)

    def reduce(self, ufunc: np.ufunc, per_series: np.ndarray, identity: float) -> np.ndarray:
        """`ufunc` (np.add, np.minimum, np.maximum) of `per_series` (one row per series) over each row's series."""
        out = np.full((len(self.rows), *per_series.shape[1:]), identity, dtype=per_series.dtype)
        for order, starts, rows in self._groups:
            if len(order):
                out[rows] = ufunc.reduceat(per_series[order], starts, axis=0)
        return out


def _row_order(area: Area) -> tuple[int, Area]:
    return LEVELS.index(area.level), area


_CACHE: dict[bytes, Levels] = {}
_CACHE_SIZE = 256


def levels_of(table: SeriesTable) -> Levels:
    """`Levels(table)`, cached by the table's digest: every window of a segment shares its table."""
    levels = _CACHE.get(table.digest)
    if levels is None:
        levels = Levels(table.items)
        if len(_CACHE) >= _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[table.digest] = levels
    return levels
