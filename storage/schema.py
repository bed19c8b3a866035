"""The InfluxDB schema of DESIGN.md: measurement, tag and field names, in one place.

Pipelines, ingest and dashboards take every name from here. The point builders
below (`raw_point`, `rollup_point`, `health_point`, ...) are each measurement's
definition, one point at a time: ingest writes raw and self-metric points with
them, tests and fixtures the others. The pipelines write the same measurements
column-wise (`pipelines.points.PointBatch`, for speed); tests/pipelines checks
their health and AQI points against `health_point` and `aqi_point`. `rollup_point` writes every statistic,
where the pipelines write `rollup_stats` only (readers take nothing else).

- `{kind}` (RP raw): tags super_cluster, city, district, site, sensor_id, vendor;
  one float field per metric; time = reading ts.
- `{kind}_1m`, `{kind}_1h` (RP rollup): tags level, area, super_cluster, city,
  district; fields `{metric}_mean/_min/_max` (float), `{metric}_count` (int), and
  `{metric}_sum` (float) only for a metric whose registry `aggregate` is `sum` (rain,
  vehicles since the previous reading: the figure its charts read; `rollup_stats`).
  Only what a reader uses is written (`rollup_levels`): a window no longer than the
  kind's reporting interval has no sensor-level row, since it would repeat the raw
  point (readers take raw there), so `{kind}_1m` has area levels only for a kind
  reporting every minute or less often.
- `aqi_1h` (rollup): tags as rollups; aqi, band, `{pollutant}_aqi` (int), dominant (str).
- `sensor_health_1h` (rollup): sensor tags; received, expected, flatline,
  outliers, seq_gaps (int), completeness (float).
- `anomalies` (rollup): sensor tags plus kind, metric, type (`spike`,
  `rapid_rise`); value, score, threshold (float); time = the reading's ts.
- `ingest` (raw): tag instance; received, accepted, rejected, `rejected_{code}`,
  spool_lag, write latency and batch figures, and the loss ingest sees itself
  (`INGEST_LOSS_FIELDS`: broker drops, lost or restored sessions, damaged spool,
  rejections not stored).
- `ingest_vendors` (raw): tags instance, vendor; received, accepted, rejected,
  rejects_not_stored (int), per interval. `ingest_rejects` (raw): tags instance, vendor, code; rejected (int), per
  interval, only where non-zero. The vendor is the one of the sensor the topic names,
  or `_unknown` when it names none; the series stay few (instances x vendors x codes).

Times: raw points carry the reading's `ts` (ms); rollups, AQI and health the
window start. Tags of levels above a district are left out rather than
written empty (InfluxDB cannot store an empty tag value; InfluxQL's
`district = ''` matches a missing tag).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from sensors.reading import CorruptRecord, Reading, context_of, decode_reading_json, split_reading
from storage.line_protocol import (
    MAX_FIELD_KEY_BYTES,
    MAX_KEY_BYTES,
    MAX_TIME_NS,
    NS_PER_UNIT,
    SERIES_CACHE_MAX,
    Encoder,
    FieldValue,
    LineProtocolError,
    Point,
)
from storage.settings import DEFAULT_DB, RAW_RETENTION, RAW_RP, ROLLUP_RETENTION, ROLLUP_RP

__all__ = [
    "ANOMALY_FIELDS",
    "ANOMALY_MEASUREMENT",
    "ANOMALY_RAPID_RISE",
    "ANOMALY_SPIKE",
    "ANOMALY_TAGS",
    "ANOMALY_TYPES",
    "AQI_FIELDS",
    "AQI_MEASUREMENT",
    "DEFAULT_DB",
    "HEALTH_FIELDS",
    "HEALTH_MEASUREMENT",
    "INGEST_BROKER_DROPPED",
    "INGEST_FIELDS",
    "INGEST_LOSS_FIELDS",
    "INGEST_MEASUREMENT",
    "INGEST_REJECTS_MEASUREMENT",
    "INGEST_SESSION_NOT_PRESENT",
    "INGEST_SESSION_RESTORED",
    "INGEST_SPOOL_LOST",
    "INGEST_TAGS",
    "INGEST_VENDORS_MEASUREMENT",
    "INGEST_VENDOR_FIELDS",
    "LEVELS",
    "RAW_RETENTION",
    "RAW_RP",
    "ROLLUP_RETENTION",
    "ROLLUP_RP",
    "ROLLUP_TAGS",
    "SELFTEST_MEASUREMENT",
    "SENSOR_TAGS",
    "STATS",
    "UNKNOWN_VENDOR",
    "WINDOWS",
    "WINDOW_SECONDS",
    "RawLines",
    "RollupStats",
    "anomaly_point",
    "aqi_point",
    "health_point",
    "ingest_point",
    "ingest_reject_point",
    "ingest_vendor_point",
    "pollutant_aqi_field",
    "raw_point",
    "rollup_field",
    "rollup_fields",
    "rollup_levels",
    "rollup_measurement",
    "rollup_point",
    "rollup_stats",
    "rollup_tags",
]

Window = Literal["1m", "1h"]
Level = Literal["sensor", "district", "city", "super_cluster"]

# Tags of a raw point (and of sensor_health_1h), in DESIGN.md order.
SENSOR_TAGS: tuple[str, ...] = ("super_cluster", "city", "district", "site", "sensor_id", "vendor")
# Tags of rollups and aqi_1h.
ROLLUP_TAGS: tuple[str, ...] = ("level", "area", "super_cluster", "city", "district")
LEVELS: tuple[Level, ...] = ("sensor", "district", "city", "super_cluster")
WINDOWS: tuple[Window, ...] = ("1m", "1h")
WINDOW_SECONDS: dict[str, int] = {"1m": 60, "1h": 3600}
STATS: tuple[str, ...] = ("mean", "min", "max", "count", "sum")
# One metric's figures in one rollup window, in STATS order: (mean, min, max, count, sum).
RollupStats = tuple[float, float, float, int, float]

AQI_MEASUREMENT = "aqi_1h"
AQI_FIELDS: tuple[str, ...] = ("aqi", "band", "dominant")  # plus one `{pollutant}_aqi` per pollutant

HEALTH_MEASUREMENT = "sensor_health_1h"
HEALTH_FIELDS: tuple[str, ...] = ("received", "expected", "completeness", "flatline", "outliers", "seq_gaps")

# Readings an alert should look at (pipelines.anomalies): one point per reading, metric and type.
ANOMALY_MEASUREMENT = "anomalies"
ANOMALY_TAGS: tuple[str, ...] = (*SENSOR_TAGS, "kind", "metric", "type")
ANOMALY_FIELDS: tuple[str, ...] = ("value", "score", "threshold")
# `type` tag values: a robust z-score spike, or a rise towards a site's danger level (score = rate per hour).
ANOMALY_SPIKE = "spike"
ANOMALY_RAPID_RISE = "rapid_rise"
ANOMALY_TYPES: tuple[str, ...] = (ANOMALY_SPIKE, ANOMALY_RAPID_RISE)

INGEST_MEASUREMENT = "ingest"
INGEST_TAGS: tuple[str, ...] = ("instance",)
# Core fields: counters since the previous report (every 10 s) and gauges; `rejected_{code}` per reject code.
# The ingest service may add more (it owns them).
INGEST_FIELDS: tuple[str, ...] = (
    "received",
    "accepted",
    "rejected",
    "duplicates",
    "spool_lag",
    "spool_lag_s",
    "write_batches",
    "write_points",
    "write_latency_ms_mean",
    "write_latency_ms_max",
    "write_retries",
    "dead_letters",
)
# Loss visible without the simulator's manifests (int, per interval; each has an alert rule):
# messages the broker dropped (its `$SYS/broker/publish/messages/dropped` counter went up by this much),
# reconnects that found no session though ingest had one (queued messages may be gone), reconnects to a
# restarted broker that restored the session from its persistence file (messages queued after its last
# save may be gone), and records of damaged closed spool segments that could not be read.
INGEST_BROKER_DROPPED = "broker_dropped"
INGEST_SESSION_NOT_PRESENT = "session_not_present"
INGEST_SESSION_RESTORED = "session_restored"
INGEST_SPOOL_LOST = "spool_lost_records"
# Rejections answered on the reject topic but not kept in the reject store (a vendor over its budget):
# the audit's evidence of them is this count. Also per vendor in `ingest_vendors`.
INGEST_REJECTS_NOT_STORED = "rejects_not_stored"
INGEST_LOSS_FIELDS: tuple[str, ...] = (
    INGEST_BROKER_DROPPED,
    INGEST_SESSION_NOT_PRESENT,
    INGEST_SESSION_RESTORED,
    INGEST_SPOOL_LOST,
    INGEST_REJECTS_NOT_STORED,
)

# Per-vendor counters of each ingest process, per interval like `ingest`'s; rejects by code in their own
# measurement (one series per vendor and code that occurred), so a panel groups by both tags.
INGEST_VENDORS_MEASUREMENT = "ingest_vendors"
INGEST_VENDOR_FIELDS: tuple[str, ...] = ("received", "accepted", "rejected", INGEST_REJECTS_NOT_STORED)
INGEST_REJECTS_MEASUREMENT = "ingest_rejects"
# The vendor of messages whose topic names no registered sensor (registry vendor ids never start with `_`).
UNKNOWN_VENDOR = "_unknown"

# storage.health writes one point here (raw RP) per self-test; one series per host.
SELFTEST_MEASUREMENT = "_selftest"


def raw_point(reading: Reading) -> Point:
    """The raw point of a reading: measurement `{kind}`, sensor tags, one float per metric, time `ts` (ms)."""
    return Point(
        reading.kind,
        {
            "super_cluster": reading.super_cluster,
            "city": reading.city,
            "district": reading.district,
            "site": reading.site,
            "sensor_id": reading.sensor_id,
            "vendor": reading.vendor,
        },
        # Floats always: an int would become an integer field and conflict with earlier floats.
        {metric: float(value) for metric, value in reading.values.items()},
        reading.ts,
        "ms",
    )


class RawLines:
    """The lines of readings' raw points, as `raw_point` and `Encoder` write them, without building `Point`s.

    The raw writer's hot path: each sensor's escaped series key is found by the reading's own tag
    fields (no tag dict, no `Point`, per reading), and the fields go through the encoder's caches.
    A reading line protocol cannot carry is refused with the encoder's reason. Not thread-safe.
    """

    _MAX_MS = MAX_TIME_NS // NS_PER_UNIT["ms"]

    def __init__(self, encoder: Encoder | None = None) -> None:
        self.encoder = encoder if encoder is not None else Encoder()
        # (kind, super_cluster, city, district, site, sensor_id, vendor) -> `measurement,tags ` (None: a series
        # key so long that its field keys need checking; such a reading goes through `raw_point`)
        self._heads: dict[tuple[str, ...], str | None] = {}
        # A record's context bytes (`split_reading`) -> its head (None: the reading is decoded whole)
        self._contexts: dict[bytes, str | None] = {}

    def lines(self, readings: Iterable[Reading]) -> tuple[list[str], list[tuple[Reading, LineProtocolError]]]:
        """The line of each reading (millisecond times), and the readings refused with the reason."""
        heads = self._heads
        fields = self.encoder.float_fields
        max_ms = self._MAX_MS
        out: list[str] = []
        refused: list[tuple[Reading, LineProtocolError]] = []
        for r in readings:
            key = (r.kind, r.super_cluster, r.city, r.district, r.site, r.sensor_id, r.vendor)
            head = heads.get(key, "")  # "" (no head is empty): not seen yet
            if head == "":
                head = self._head(key, r)
            ts = r.ts
            try:
                if head is None or not r.values or ts.__class__ is not int or not -max_ms <= ts <= max_ms:
                    out.append(self.encoder.line(raw_point(r)))  # says what is wrong, or writes it
                else:
                    out.append(f"{head}{fields(r.values)} {ts}")
            except LineProtocolError as err:
                refused.append((r, err))
        return out, refused

    def record_lines(
        self, records: Iterable[bytes]
    ) -> tuple[list[str], list[tuple[Reading, LineProtocolError]], list[CorruptRecord]]:
        """`lines` of readings given as their spool records' JSON (`StreamTail.read_json`), and the records
        that are not readings. Of a record only `ts` and `values` are decoded: the bytes of its sensor
        context find the series key (checked once against the record decoded whole). A record of an older
        field order, or one `lines` must check, is decoded whole."""
        contexts = self._contexts
        fields = self.encoder.float_fields
        max_ms = self._MAX_MS
        out: list[str] = []
        refused: list[tuple[Reading, LineProtocolError]] = []
        corrupt: list[CorruptRecord] = []
        for record in records:
            split = split_reading(record)
            if split is not None:
                context, tail = split
                head = contexts.get(context, "")  # "" (no head is empty): not seen yet
                if head == "":
                    head = self._context_head(context, record)
                ts = tail.ts
                if head is not None and tail.values and -max_ms <= ts <= max_ms:
                    try:
                        out.append(f"{head}{fields(tail.values)} {ts}")
                        continue
                    except LineProtocolError:
                        pass  # `lines` refuses it, with the reason
            try:
                reading = decode_reading_json(record)
            except CorruptRecord as err:
                corrupt.append(err)
                continue
            more, bad = self.lines([reading])
            out += more
            refused += bad
        return out, refused, corrupt

    def _context_head(self, context: bytes, record: bytes) -> str | None:
        """The head for a record's context bytes, cached; None (decode each whole) when the record is not
        a reading, or the bytes are not the context `encode_reading` writes for it (an older field order)."""
        try:
            reading = decode_reading_json(record)
        except CorruptRecord:
            return None  # not cached: the next record of these bytes may be sound
        if len(self._contexts) >= SERIES_CACHE_MAX:
            self._contexts.clear()
        head = None
        if context_of(reading) == context:
            key = (reading.kind, reading.super_cluster, reading.city, reading.district, reading.site,
                   reading.sensor_id, reading.vendor)  # fmt: skip
            head = self._heads.get(key, "")
            if head == "":
                head = self._head(key, reading)
        self._contexts[context] = head
        return head

    def _head(self, key: tuple[str, ...], reading: Reading) -> str | None:
        if len(self._heads) >= SERIES_CACHE_MAX:
            self._heads.clear()
        point = raw_point(reading)
        try:
            prefix, size = self.encoder.series_key(point.measurement, point.tags)
        except LineProtocolError:
            head = None  # not cached: each reading of it is refused with the reason
        else:
            head = self._heads[key] = prefix + " " if size <= MAX_KEY_BYTES - MAX_FIELD_KEY_BYTES else None
        return head


def rollup_measurement(kind: str, window: str) -> str:
    """`{kind}_{window}`, e.g. `air_quality_1h`."""
    if window not in WINDOWS:
        raise ValueError(f"rollup window must be one of {', '.join(WINDOWS)}, got {window!r}")
    return f"{kind}_{window}"


def rollup_field(metric: str, stat: str) -> str:
    """`{metric}_{stat}`, e.g. `pm25_mean`."""
    if stat not in STATS:
        raise ValueError(f"rollup statistic must be one of {', '.join(STATS)}, got {stat!r}")
    return f"{metric}_{stat}"


def rollup_stats(aggregate: str) -> tuple[str, ...]:
    """The statistics stored for a metric of registry `aggregate` (`mean` or `sum`), in STATS order.

    `_sum` is read only where the figure is a total (a `sum` metric's charts and report); for a
    level or a concentration the mean is the figure, and `_sum` would add a fifth of the field
    values InfluxDB stores for nothing.
    """
    return STATS if aggregate == "sum" else tuple(s for s in STATS if s != "sum")


def rollup_levels(window: str, interval_s: int) -> tuple[Level, ...]:
    """The levels a `window` rollup is stored at, for a kind whose sensors report every `interval_s`.

    A sensor's window no longer than its reporting interval holds one reading (rarely two, with
    jitter): its row would repeat the raw point with count 1, and made 78 % of the points a day's
    backfill wrote. Readers (dashboards, report) take raw for that sensor tier instead.
    """
    if window not in WINDOW_SECONDS:
        raise ValueError(f"rollup window must be one of {', '.join(WINDOWS)}, got {window!r}")
    return LEVELS[1:] if WINDOW_SECONDS[window] <= interval_s else LEVELS


def rollup_fields(metric: str) -> tuple[str, ...]:
    """The rollup fields of a metric: mean, min, max, count, sum."""
    return tuple(f"{metric}_{stat}" for stat in STATS)


def pollutant_aqi_field(pollutant: str) -> str:
    """The sub-index field of a pollutant in `aqi_1h`, e.g. `pm25_aqi`."""
    return f"{pollutant}_aqi"


def rollup_tags(
    level: str, area: str, *, super_cluster: str, city: str | None = None, district: str | None = None
) -> dict[str, str]:
    """Tags of a rollup or AQI point; `area` is the id at `level`, enclosing levels are tags.

    Levels above district leave the finer tags out (`city` for a super-cluster,
    `district` for a city), which InfluxQL matches as `district = ''`.
    """
    if level not in LEVELS:
        raise ValueError(f"rollup level must be one of {', '.join(LEVELS)}, got {level!r}")
    tags = {"level": level, "area": area, "super_cluster": super_cluster}
    if city:
        tags["city"] = city
    if district:
        tags["district"] = district
    needs = {"sensor": ("city", "district"), "district": ("city", "district"), "city": ("city",), "super_cluster": ()}
    missing = [name for name in needs[level] if name not in tags]
    if missing:
        raise ValueError(f"a {level}-level rollup needs {', '.join(missing)}")
    return tags


def rollup_point(
    kind: str,
    window: str,
    tags: Mapping[str, str],
    stats: Mapping[str, RollupStats],
    window_start_ms: int,
) -> Point:
    """A rollup point; `stats` maps each metric to (mean, min, max, count, sum); `tags` from `rollup_tags`."""
    fields: dict[str, FieldValue] = {}
    for metric, (mean, low, high, count, total) in stats.items():
        fields[f"{metric}_mean"] = float(mean)
        fields[f"{metric}_min"] = float(low)
        fields[f"{metric}_max"] = float(high)
        fields[f"{metric}_count"] = int(count)
        fields[f"{metric}_sum"] = float(total)
    return Point(rollup_measurement(kind, window), dict(tags), fields, window_start_ms, "ms")


def aqi_point(
    tags: Mapping[str, str],
    *,
    aqi: int,
    band: int,
    dominant: str,
    sub_indices: Mapping[str, int],
    hour_start_ms: int,
) -> Point:
    """An `aqi_1h` point: overall AQI, band 1-5, dominant pollutant and one sub-index per pollutant."""
    if not 1 <= band <= 5:
        raise ValueError(f"AQI band must be 1-5, got {band}")
    fields: dict[str, FieldValue] = {"aqi": int(aqi), "band": int(band), "dominant": dominant}
    for pollutant, value in sub_indices.items():
        fields[pollutant_aqi_field(pollutant)] = int(value)
    return Point(AQI_MEASUREMENT, dict(tags), fields, hour_start_ms, "ms")


def health_point(
    sensor_tags: Mapping[str, str],
    *,
    received: int,
    expected: int,
    flatline: int,
    outliers: int,
    hour_start_ms: int,
    seq_gaps: int = 0,
) -> Point:
    """A `sensor_health_1h` point; completeness = received / expected (0 when nothing was expected)."""
    missing = [name for name in SENSOR_TAGS if name not in sensor_tags]
    if missing:
        raise ValueError(f"sensor health tags lack {', '.join(missing)}")
    completeness = min(received / expected, 1.0) if expected > 0 else 0.0
    fields: dict[str, FieldValue] = {
        "received": int(received),
        "expected": int(expected),
        "completeness": float(completeness),
        "flatline": int(flatline),
        "outliers": int(outliers),
        "seq_gaps": int(seq_gaps),
    }
    return Point(HEALTH_MEASUREMENT, dict(sensor_tags), fields, hour_start_ms, "ms")


def anomaly_point(
    sensor_tags: Mapping[str, str],
    *,
    kind: str,
    metric: str,
    anomaly_type: str,
    value: float,
    score: float,
    threshold: float,
    ts_ms: int,
) -> Point:
    """An `anomalies` point of one reading's metric; `anomaly_type` (tag `type`) is one of `ANOMALY_TYPES`."""
    if anomaly_type not in ANOMALY_TYPES:
        raise ValueError(f"anomaly type must be one of {', '.join(ANOMALY_TYPES)}, got {anomaly_type!r}")
    tags = {**{name: sensor_tags[name] for name in SENSOR_TAGS}, "kind": kind, "metric": metric, "type": anomaly_type}
    fields: dict[str, FieldValue] = {"value": float(value), "score": float(score), "threshold": float(threshold)}
    return Point(ANOMALY_MEASUREMENT, tags, fields, ts_ms, "ms")


def ingest_point(instance: str, fields: Mapping[str, FieldValue], ts_ms: int) -> Point:
    """An `ingest` self-metrics point of one ingest process (`instance` tag); fields as in `INGEST_FIELDS`."""
    return Point(INGEST_MEASUREMENT, {"instance": instance}, dict(fields), ts_ms, "ms")


def ingest_vendor_point(
    instance: str, vendor: str, *, received: int, accepted: int, rejected: int, ts_ms: int, rejects_not_stored: int = 0
) -> Point:
    """An `ingest_vendors` point: one vendor's messages received, accepted and rejected by a process in an
    interval, and its rejections not kept (over its reject store budget)."""
    fields: dict[str, FieldValue] = {
        "received": int(received),
        "accepted": int(accepted),
        "rejected": int(rejected),
        INGEST_REJECTS_NOT_STORED: int(rejects_not_stored),
    }
    return Point(INGEST_VENDORS_MEASUREMENT, {"instance": instance, "vendor": vendor}, fields, ts_ms, "ms")


def ingest_reject_point(instance: str, vendor: str, code: str, rejected: int, ts_ms: int) -> Point:
    """An `ingest_rejects` point: one vendor's messages rejected with one code by one process in an interval."""
    tags = {"instance": instance, "vendor": vendor, "code": code}
    return Point(INGEST_REJECTS_MEASUREMENT, tags, {"rejected": int(rejected)}, ts_ms, "ms")
