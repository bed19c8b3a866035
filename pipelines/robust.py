"""Robust statistics per sensor: medians, the modified z-score, repeated values.

The modified z-score (Iglewicz and Hoaglin) of a value x among a sensor's
readings is `0.6745 * (x - median) / MAD`, MAD being the median absolute
deviation. Unlike a mean and standard deviation, one wild value does not hide
itself by inflating the spread. A reading is an outlier when `|z| >
Z_THRESHOLD` (3.5, their recommendation). The score needs `MIN_READINGS` values
of the metric and a MAD above zero: a metric that is mostly constant (rainfall
on a dry day, an idle car park) has no spread to measure against and is never
flagged. `SensorHealth` counts outliers per sensor-hour and `Anomalies` writes
them as `spike`s, from this one function, so the two always agree.
"""

from __future__ import annotations

import numpy as np

from pipelines.batch import ReadingBatch

Z_THRESHOLD = 3.5
MIN_READINGS = 8
_Z_SCALE = 0.6745  # makes the MAD of normal data comparable to its standard deviation


def group_median(values: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """The median of the non-NaN values of each group 0..groups-1, per column (NaN for a group without any).

    `values` is (n, m): every column at once. The values are laid out as a (groups, longest
    group, m) table and sorted along the group axis in one call (NaN sorts last); the median
    is the mean of the two middle order statistics, exactly as a sort per group would give.
    A table much larger than the values (one group far longer than the rest) sorts per
    column by (group, value) instead, to bound memory.
    """
    order = np.argsort(group, kind="stable")
    member = group[order]
    size = np.bincount(member, minlength=groups)
    longest = int(size.max(initial=0))
    if not longest:
        return np.full((groups, values.shape[1]), np.nan)
    if groups * longest > 4 * len(values) + 4096:
        return np.stack([_sorted_median(values[:, j], group, groups) for j in range(values.shape[1])], axis=1)
    table = np.full((groups, longest, values.shape[1]), np.nan)
    table[member, np.arange(len(member)) - (np.cumsum(size) - size)[member]] = values[order]
    table.sort(axis=1)
    count = (~np.isnan(table)).sum(axis=1)
    lower = np.take_along_axis(table, np.maximum((count - 1) // 2, 0)[:, None, :], axis=1)[:, 0]
    upper = np.take_along_axis(table, np.minimum(count // 2, longest - 1)[:, None, :], axis=1)[:, 0]
    return np.where(count > 0, (lower + upper) / 2, np.nan)


def _sorted_median(values: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """`group_median` of one column by sorting (group, value) pairs."""
    missing = np.isnan(values)
    order = np.lexsort((np.where(missing, np.inf, values), group))
    counts = np.bincount(group[~missing], minlength=groups)
    starts = np.searchsorted(group[order], np.arange(groups))
    ordered = values[order]
    last = max(len(values) - 1, 0)
    lower = ordered[np.minimum(starts + (counts - 1) // 2, last)] if len(values) else np.zeros(groups)
    upper = ordered[np.minimum(starts + counts // 2, last)] if len(values) else np.zeros(groups)
    return np.where(counts > 0, (lower + upper) / 2, np.nan)


def modified_z(batch: ReadingBatch) -> np.ndarray:
    """The modified z-score of every value of `batch` within its sensor's readings in the batch.

    Shape (len(batch), len(metrics)); NaN where the value is missing or the
    sensor has fewer than `MIN_READINGS` values of the metric or a zero MAD.
    """
    group = batch.sensor.astype(np.intp)
    groups = len(batch.series)
    values = batch.values
    counts = np.stack([np.bincount(group[~np.isnan(v)], minlength=groups) for v in values.T], axis=1)
    median = group_median(values, group, groups)[group]
    mad = group_median(np.abs(values - median), group, groups)
    usable = (counts >= MIN_READINGS) & (mad > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(usable[group], _Z_SCALE * (values - median) / mad[group], np.nan)


def repeats_previous(batch: ReadingBatch) -> np.ndarray:
    """True for a reading whose every value equals the previous reading of its sensor (batch sorted by sensor, ts).

    A stuck sensor repeats itself exactly; real measurements almost never do on
    every metric at once. Missing values count as equal only to missing values.
    """
    flat = np.zeros(len(batch), dtype=bool)
    if len(batch) > 1:
        now, before = batch.values[1:], batch.values[:-1]
        same = (now == before) | (np.isnan(now) & np.isnan(before))
        flat[1:] = same.all(axis=1) & (batch.sensor[1:] == batch.sensor[:-1])
    return flat
