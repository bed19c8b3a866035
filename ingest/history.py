"""The conflict index: which values ingest stored for each (sensor_id, ts) of the acceptance window.

A reading's identity is (sensor_id, ts). The same reading again (a QoS 1
redelivery, a gateway retry) is a harmless duplicate; the same identity with
other values would silently rewrite history in InfluxDB, so ingest refuses it
with `conflict` and keeps the first value. Readings older than the acceptance
window are refused by the contract (`ts_too_old`), so the index only needs
that window.

Layout, for memory: one open-addressing hash table in two numpy arrays,
`uint64` key = (sensor number << 42) | ts in epoch ms (ts below 2**42, the
year 2109), and `uint64` value = a 64-bit hash of the values: 16 bytes a
slot, 35-70 % full, so 23-46 bytes an entry (docs/reliability.md has the
figures at pilot scale and 30x). Entries older than the window are dropped
whenever the table would grow, so its size follows the fleet's readings per
window, not the length of the history.

`rebuild()` fills it at start-up from the stream's own spool segments
(readings within the window, oldest first: the first value wins, as it did in
InfluxDB). Used from one thread (the MQTT loop) after the rebuild.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
import numpy as np

from ingest.spool import segment_files
from sensors.contract import MAX_FUTURE_MS
from sensors.reading import Reading, verify_line
from sensors.spool import CLOSED_SUFFIX, READINGS, BadMetadata, iter_lines, read_meta

logger = logging.getLogger(__name__)

TS_BITS = 42
TS_MASK = (1 << TS_BITS) - 1
MAX_SENSORS = 1 << (64 - TS_BITS)
MAX_LOAD = 0.7  # a fuller table probes longer
RESIZE_LOAD = 0.5  # after a resize at most this full, so the next one is far off (a doubling from MAX_LOAD)
MIN_SLOTS = 1 << 12
SLOT_BYTES = 16  # a uint64 key and a uint64 value
INSERT_CHUNK = 1 << 15  # keys per vectorised insert (resize, rebuild): bounds its temporaries to a few MiB
_M64 = (1 << 64) - 1
_MULT = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads the regular ts of one sensor over the table


class _Identity(msgspec.Struct):
    """What the rebuild needs of a spool line (the rest of the record is skipped by the decoder)."""

    sensor_id: str
    ts: int
    values: dict[str, float]


_decode_identity = msgspec.json.Decoder(_Identity).decode


def values_hash(values: Mapping[str, float]) -> int:
    """64 bits of the values, for any order of the metrics (the contract gives every value as a float).

    Python's own hash: it seeds str hashes per process, which is enough because the index lives
    in one process and `rebuild()` hashes the stored values again after a restart. It costs half
    of a BLAKE2b over sorted JSON, which this was (issue 19)."""
    return hash(frozenset(values.items())) & _M64


class History:
    """(sensor_id, ts) -> hash of the values, for readings of the last `window_ms` (plus the future slack)."""

    def __init__(self, window_ms: int, slots: int = MIN_SLOTS, max_bytes: int = 0) -> None:
        self.window_ms = window_ms
        # The memory cap (0: none): the table never grows past it; the oldest entries make room instead.
        self.max_slots = max(MIN_SLOTS, 1 << ((max_bytes // SLOT_BYTES).bit_length() - 1)) if max_bytes else 2**40
        self.checked_from_ms: int | None = None  # set when the cap dropped entries still in the window
        self._sensors: dict[str, int] = {}
        self._count = 0
        self._alloc(min(self.max_slots, max(MIN_SLOTS, 1 << (max(slots, 1) - 1).bit_length())))

    def _alloc(self, slots: int) -> None:
        self._keys = np.zeros(slots, np.uint64)
        self._vals = np.zeros(slots, np.uint64)
        self._kview = self._keys.data  # indexing a memoryview gives Python ints, faster than numpy's
        self._vview = self._vals.data
        self._shift = 64 - (slots.bit_length() - 1)
        self._mask = slots - 1

    def __len__(self) -> int:
        return self._count

    @property
    def slots(self) -> int:
        return self._mask + 1

    @property
    def nbytes(self) -> int:
        """Bytes of the table (the sensor numbering is a few bytes per sensor of the fleet on top)."""
        return self._keys.nbytes + self._vals.nbytes

    def _key(self, sensor_id: str, ts: int) -> int:
        number = self._sensors.get(sensor_id)
        if number is None:
            number = self._sensors[sensor_id] = len(self._sensors) + 1  # key 0 marks an empty slot
            if number >= MAX_SENSORS:
                raise OverflowError(f"the conflict index holds at most {MAX_SENSORS - 1} sensors")
        return (number << TS_BITS) | (ts & TS_MASK)

    def _slot(self, key: int) -> int:
        """The slot holding `key`, or the empty slot where it would go."""
        keys, mask = self._kview, self._mask
        i = ((key * _MULT) & _M64) >> self._shift
        while True:
            found = keys[i]
            if found == key or found == 0:
                return i
            i = (i + 1) & mask

    def stored(self, sensor_id: str, ts: int) -> int | None:
        """The values hash stored for (sensor_id, ts), or None."""
        i = self._slot(self._key(sensor_id, ts))
        return self._vview[i] if self._kview[i] else None

    def admit(self, readings: Sequence[Reading], now_ms: int | None = None) -> Reading | None:
        """The first reading whose (sensor_id, ts) is stored with other values (nothing is recorded then:
        a message is accepted or rejected whole); otherwise record the new ones and return None."""
        entries = []
        kview, vview, sensors = self._kview, self._vview, self._sensors
        mask, shift = self._mask, self._shift
        for reading in readings:
            number = sensors.get(reading.sensor_id)
            if number is None:
                key = self._key(reading.sensor_id, reading.ts)
            else:  # `_key` and `_slot` inline: this runs for every reading ingest accepts
                key = (number << TS_BITS) | (reading.ts & TS_MASK)
            value = values_hash(reading.values)
            i = ((key * _MULT) & _M64) >> shift
            while (found := kview[i]) != key and found:
                i = (i + 1) & mask
            if found:
                if vview[i] != value:
                    return reading
                continue  # the same reading again: an idempotent duplicate
            entries.append((key, value, i))
        for key, value, i in entries:
            if (self._count + 1) > MAX_LOAD * (self._mask + 1):
                self._resize(now_ms if now_ms is not None else int(time.time() * 1000))
                i = self._slot(key)
            elif self._kview[i]:  # taken by an entry before it: probe on (a slot is never emptied here)
                i = self._slot(key)
            if not self._kview[i]:
                self._kview[i] = key
                self._vview[i] = value
                self._count += 1
        return None

    # -- bulk operations (vectorised) ------------------------------------------------------------

    def _resize(self, now_ms: int) -> None:
        used = self._keys != 0
        keys, vals = self._keys[used], self._vals[used]
        del used
        self._fit(keys, vals, now_ms)

    def _fit(self, keys: np.ndarray, vals: np.ndarray, now_ms: int) -> None:
        """Make the table hold these distinct entries: drop what is older than the window, double the table
        until the rest fills at most `RESIZE_LOAD` of it (it never shrinks: the window fills it again),
        and at the memory cap keep only the newest entries, with a warning."""
        before = len(keys)
        live = (keys & np.uint64(TS_MASK)) >= np.uint64(max(self._cutoff(now_ms), 0))
        if not live.all():  # (no copies when every entry is in the window)
            keys, vals = keys[live], vals[live]
        del live
        slots = self.slots
        while len(keys) + 1 > RESIZE_LOAD * slots and slots < self.max_slots:
            slots *= 2
        room = int(RESIZE_LOAD * slots)
        if len(keys) > room:
            newest = np.argpartition(keys & np.uint64(TS_MASK), len(keys) - room)[len(keys) - room :]
            keys, vals = keys[newest], vals[newest]
            self.checked_from_ms = int((keys & np.uint64(TS_MASK)).min())
            logger.warning(
                "conflict index at its memory cap (%.0f MiB, history_max_mib): readings older than %s (%.1f h, "
                "of the %.0f h acceptance window) are no longer checked for conflicts; raise the cap or split the "
                "fleet over more ingest processes",
                slots * SLOT_BYTES / 2**20,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.checked_from_ms / 1000)),
                (now_ms - self.checked_from_ms) / 3_600_000,
                self.window_ms / 3_600_000,
            )
        self._alloc(slots)
        self._count = 0
        self._insert_unique(keys, vals)
        logger.debug("conflict index: %d entries in %d slots (%d dropped)", self._count, self.slots,
                     before - self._count)  # fmt: skip

    def _cutoff(self, now_ms: int) -> int:
        return now_ms - self.window_ms - MAX_FUTURE_MS

    def _insert_unique(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Insert keys absent from the table and distinct from each other, a chunk at a time: the
        temporaries of a vectorised insert are several times the keys' size, and a resize at pilot
        scale would otherwise peak at twice the table's memory on top of it."""
        for start in range(0, len(keys), INSERT_CHUNK):
            self._insert_chunk(keys[start : start + INSERT_CHUNK], vals[start : start + INSERT_CHUNK])

    def _insert_chunk(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Insert keys absent from the table and distinct from each other, by rounds of linear probing."""
        table_keys, table_vals = self._keys, self._vals
        slots = ((keys * np.uint64(_MULT)) >> np.uint64(self._shift)).astype(np.int64)
        pending = np.arange(len(keys))
        while pending.size:
            at = slots[pending]
            free = table_keys[at] == 0
            # Of several keys that want the same free slot, the first takes it; the rest probe on.
            candidates, wanted = pending[free], at[free]
            taken, first = np.unique(wanted, return_index=True)
            winners = candidates[first]
            table_keys[taken] = keys[winners]
            table_vals[taken] = vals[winners]
            placed = np.zeros(len(keys), bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            slots[pending] = (slots[pending] + 1) & self._mask
        self._count += len(keys)

    def load(self, entries: Iterable[tuple[str, int, Mapping[str, float]]], now_ms: int) -> int:
        """Add (sensor_id, ts, values) in the order they were stored: the first value of an identity wins.
        Entries older than the window are skipped. Returns how many were added."""
        cutoff = self._cutoff(now_ms)
        keys: list[int] = []
        vals: list[int] = []
        for sensor_id, ts, values in entries:
            if ts >= cutoff:
                keys.append(self._key(sensor_id, ts))
                vals.append(values_hash(values))
        if not keys:
            return 0
        used = self._keys != 0
        # The table's entries first: the first value of an identity wins.
        key_array = np.concatenate([self._keys[used], np.array(keys, np.uint64)])
        val_array = np.concatenate([self._vals[used], np.array(vals, np.uint64)])
        _, first = np.unique(key_array, return_index=True)
        before = self._count
        self._fit(key_array[first], val_array[first], now_ms)
        return self._count - before

    def rebuild(self, stream_dir: Path, now_ms: int | None = None) -> int:
        """Load the readings of the window from the stream's closed reading segments (the writer closed
        any left open); returns how many identities were loaded."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = self._cutoff(now_ms)
        started = time.monotonic()
        segments = []
        for _, path in sorted(segment_files(stream_dir, READINGS).items()):
            if path.suffix != CLOSED_SUFFIX:
                continue
            try:
                info = read_meta(path)
            except BadMetadata:
                segments.append(path)  # read it anyway: its readings may be in the window
                continue
            if info.max_ts is not None and info.max_ts >= cutoff:
                segments.append(path)
        loaded = self.load(_identities(segments), now_ms)
        logger.info("conflict index: %d readings of the last %.0f h loaded from %d spool segments in %.1f s "
                    "(%d slots, %.1f MiB)", loaded, self.window_ms / 3_600_000, len(segments),
                    time.monotonic() - started, self.slots, self.nbytes / 2**20)  # fmt: skip
        return loaded


def _identities(segments: Iterable[Path]) -> Iterable[tuple[str, int, Mapping[str, float]]]:
    for path in segments:
        try:
            for line in iter_lines(path):
                if verify_line(line):  # a damaged line is reported by the spool check, not here
                    try:
                        record = _decode_identity(line[9:-1])
                    except msgspec.DecodeError:
                        continue
                    yield record.sensor_id, record.ts, record.values
        except FileNotFoundError:
            continue  # deleted by the retention meanwhile
