"""Deterministic noise for the simulator's signals: splitmix64 hashing of (seed, sensor, time) into
uniform numbers, smooth value noise (interpolated random lattices) and fractal sums of it.

Pure functions of their arguments, vectorised over numpy arrays: the same key and time give the same
value in any order or chunking, which is what lets a replay and a live run agree.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def stable_key(*parts: object) -> int:
    """A 64-bit key from any parts, identical across processes (unlike `hash()`)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


@functools.cache
def tag_key(name: str) -> np.uint64:
    return np.uint64(stable_key("tag", name))


def unit_random(*parts: object) -> float:
    """A uniform number in [0, 1) from any parts (per-sensor choices such as silence)."""
    return stable_key(*parts) / 2**64


def _mix(x: U64) -> U64:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniform(key: U64, index: I64) -> F64:
    """Uniform [0, 1) for each (key, index) pair."""
    bits = _mix(key ^ (index.astype(np.uint64) * _GOLDEN))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def value_noise(key: U64, t: F64, period_s: float | F64) -> F64:
    """Smooth noise in [-1, 1]: random values every `period_s`, smoothly interpolated."""
    x = t / period_s
    cell = np.floor(x)
    frac = x - cell
    smooth = frac * frac * (3.0 - 2.0 * frac)
    index = cell.astype(np.int64)
    a, b = uniform(key, index), uniform(key, index + 1)
    return (a + (b - a) * smooth) * 2.0 - 1.0


def fbm(key: U64, t: F64, period_s: float, octaves: int = 3) -> F64:
    """Fractal noise (value noise at halving periods), roughly in [-1, 1]: a bounded random walk."""
    total = np.zeros_like(t)
    weight, norm = 1.0, 0.0
    for octave in range(octaves):
        total += weight * value_noise(key ^ tag_key(f"octave{octave}"), t, period_s / 2**octave)
        norm += weight
        weight *= 0.5
    return total / norm


def bump(x: F64, centre: float | F64, width: float | F64, period: float) -> F64:
    """A Gaussian bump on a circle (hour of day, day of year): 1 at `centre`."""
    distance = np.abs((x - centre + period / 2) % period - period / 2)
    return np.exp(-0.5 * (distance / width) ** 2)
