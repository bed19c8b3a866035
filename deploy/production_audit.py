"""`smartcity audit --production`: what ingest accepted is what InfluxDB holds, without manifests.

The spool is ingest's durable record of what it acknowledged: a reading is on
disk there (fsync) before its PUBACK goes out, and the segments are kept until
the retention (`spool_retention_h`, by default for ever). So the audit reads the
reading segments themselves, which is exact where per-hour counters would not
be (a QoS 1 redelivery is in the spool twice but is one point), and compares,
per vendor, sensor and UTC hour of the reading's `ts`, with the distinct raw
points InfluxDB holds:

- accepted: distinct (sensor_id, ts) in the spool with ts in the window;
- pending: of those, the ones only after the raw writer's saved position
  (`raw-writer.offset.json`): on their way to InfluxDB, not missing (a writer
  that stays behind shows in `spool_lag_s` and its alert);
- missing: accepted - pending - stored, where positive: acknowledged readings
  that are not in InfluxDB. Records lost from a damaged closed segment are
  counted from its metadata (`sensors.spool.check_segment`);
- extra: points in InfluxDB that this spool has no record of (written another
  way, or their segments deleted by the retention): shown, not a failure.

And two signs of loss before ingest, per sensor in `ts` order over the window:

- seq gaps: numbers the sensor's optional `seq` skipped (`sensors.seq`). A
  skipped number the reject store holds (read from the rejected payload, or
  counted by a rejection of that sensor in the window whose payload names no
  seq) is a rejection, not a loss. What is left is a loss: in a gateway, or
  in the broker (a dropped queue, a crash before its save);
- silences: at least SILENCE_MIN_DUE readings in a row that were due by the
  kind's `interval_s` (half an interval of jitter allowed) and are not in the
  spool, also at the window's edges (the end capped at now). One missing
  reading alone is most often a rejection, which the reject store counts, or,
  where the sensor sends seq, a seq gap. Registry sensors without any reading
  in a window long enough for that many are counted as silent sensors. A
  sensor switched off is a health matter: silences are reported, not failed.

Exit 1 when a reading is missing, a closed segment lost records, or a seq gap
is left unexplained.

`smartcity demo` knows one more explanation that production never has: the
simulator's `drop` fault leaves readings out on purpose (its manifests count
them per sensor). Up to that many seq gaps of a sensor are `seq_dropped`,
shown as intended drops, not losses; any gap beyond them is still a loss.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploy.audit import HOUR, RECEIVE_SLACK, stored_points, stored_rejections
from ingest.spool import SpoolError, segment_files, streams
from ingest.spooltail import Offsets, Position
from sensors.reading import CorruptRecord, Reading, decode_reading
from sensors.registry import Registry
from sensors.seq import missing_ranges
from sensors.spool import (
    CLOSED_SUFFIX,
    OPEN_SUFFIX,
    READINGS,
    SegmentInfo,
    check_segment,
    closed_segments,
    segment_name,
)
from storage.query import QueryClient
from storage.settings import InfluxSettings

HOUR_MS = 3_600_000
# Readings due in a row and not there that make a silence (one alone is most often a rejection).
SILENCE_MIN_DUE = 2
# `"seq": 1042,` in a rejected payload that may be cut short (JSON or not): the number must be whole.
_SEQ_IN_PAYLOAD = re.compile(rb'"seq"\s*:\s*(\d{1,19})\s*[,}]')
DETAIL_LINES = 20


@dataclass
class VendorFigures:
    """The production audit's figures of one vendor (or of all: `ProductionAudit.total`)."""

    sensors: int = 0  # sensors with accepted readings in the window
    accepted: int = 0
    stored: int = 0
    pending: int = 0
    missing: int = 0
    extra: int = 0
    seq_gaps: int = 0  # skipped seq numbers not explained by a rejection: lost before ingest
    seq_rejected: int = 0  # skipped seq numbers that are in the reject store
    seq_dropped: int = 0  # skipped seq numbers the simulator left out on purpose (its `drop` fault; the demo)
    sensors_with_gaps: int = 0  # sensors with a silence (SILENCE_MIN_DUE readings or more due)
    readings_due: int = 0  # readings due in those silences
    silent_sensors: int = 0  # registry sensors without any accepted reading in the window

    @property
    def balanced(self) -> bool:
        return self.missing == 0 and self.seq_gaps == 0


@dataclass
class SensorGaps:
    """What the window shows of one sensor's own figures (kept for sensors with something to say)."""

    vendor: str
    kind: str
    seq_gaps: int = 0
    seq_rejected: int = 0
    seq_dropped: int = 0
    seq_missing: list[tuple[int, int]] = field(default_factory=list)  # [first, end) ranges with a loss in them
    silences: list[tuple[str, str, int]] = field(default_factory=list)  # (from, to, readings due), ISO UTC


@dataclass
class ProductionAudit:
    start: datetime
    end: datetime
    vendors: dict[str, VendorFigures] = field(default_factory=dict)
    sensors: dict[str, SensorGaps] = field(default_factory=dict)
    missing: list[dict[str, Any]] = field(default_factory=list)  # per vendor, sensor and hour
    spool_lost: int = 0  # records that closed segments' metadata lists and that no longer verify
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return not self.problems

    def total(self) -> VendorFigures:
        total = VendorFigures()
        for row in self.vendors.values():
            for name in total.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(row, name))
        return total


# -- what ingest accepted: the spool -----------------------------------------------------------


@dataclass
class _Seen:
    """Readings of one sensor in the window, as compact columns (a day of a city is millions)."""

    vendor: str
    kind: str
    ts: array[int] = field(default_factory=lambda: array("q"))
    seq: array[int] = field(default_factory=lambda: array("q"))  # -1: none
    written: array[int] = field(default_factory=lambda: array("b"))  # 1: at or before the writer's position


def _lines(path: Path) -> Iterator[tuple[bytes, int]]:
    """Each line of a segment with the byte offset just after it (a partial last line is left out)."""
    offset = 0
    with open(path, "rb") as handle:
        for line in handle:
            offset += len(line)
            if line.endswith(b"\n"):
                yield line, offset


def _segments(stream_dir: Path, closed: Sequence[SegmentInfo], audit: ProductionAudit) -> Iterator[tuple[int, Path]]:
    """(sequence number, path) of the reading segments of a stream to read: the `closed` ones (each checked
    against its metadata: records lost from it are counted), then the open one."""
    for info in closed:
        try:
            check = check_segment(info)
        except FileNotFoundError:
            continue  # deleted by the retention meanwhile
        if check.lost:
            audit.spool_lost += check.lost
            audit.problems.append(check.describe())
        yield info.seq, info.path
    for number, path in sorted(segment_files(stream_dir, READINGS).items()):
        if path.suffix == OPEN_SUFFIX:
            yield number, path


def accepted_readings(spool: Path, start_ms: int, end_ms: int, audit: ProductionAudit) -> dict[str, _Seen]:
    """Every reading of the spool with ts in [start_ms, end_ms), per sensor, marked written or pending."""
    seen: dict[str, _Seen] = {}
    closed: dict[str, list[SegmentInfo]] = defaultdict(list)
    for info in closed_segments(spool, READINGS, start_ms, end_ms, audit.skipped):
        closed[info.stream].append(info)
    for stream_dir in streams(spool):
        try:
            position: Position | None = Offsets(stream_dir).load()
        except SpoolError as err:
            audit.skipped.append(f"{err}; its readings count as pending")
            position = None
        for number, path in _segments(stream_dir, closed[stream_dir.name], audit):
            try:
                lines = list(_lines(path))
            except FileNotFoundError:  # closed (renamed) or deleted while we listed
                renamed = path.with_name(segment_name(READINGS, number, CLOSED_SUFFIX))
                lines = list(_lines(renamed)) if renamed.exists() and path.suffix == OPEN_SUFFIX else []
            for line, after in lines:
                try:
                    reading = decode_reading(line)
                except CorruptRecord:
                    continue  # a damaged closed segment is counted above; an open one's torn tail is not yet acked
                if not start_ms <= reading.ts < end_ms:
                    continue
                written = position is not None and (number, after) <= (position.seq, position.offset)
                _add(seen, reading, written)
    return seen


def _add(seen: dict[str, _Seen], reading: Reading, written: bool) -> None:
    sensor = seen.get(reading.sensor_id)
    if sensor is None:
        sensor = seen[reading.sensor_id] = _Seen(reading.vendor, reading.kind)
    sensor.ts.append(reading.ts)
    sensor.seq.append(-1 if reading.seq is None else reading.seq)
    sensor.written.append(1 if written else 0)


def _distinct(sensor: _Seen) -> list[tuple[int, int | None, bool]]:
    """(ts, seq, written) per distinct ts in ts order: of duplicates the copy read last (the later segment)
    gives the seq, as the later write wins in InfluxDB; the reading counts as written if any copy is."""
    by_ts: dict[int, tuple[int | None, bool]] = {}
    for ts, seq, written in zip(sensor.ts, sensor.seq, sensor.written, strict=True):
        before = by_ts.get(ts)
        by_ts[ts] = (None if seq < 0 else seq, bool(written) or (before is not None and before[1]))
    return [(ts, seq, written) for ts, (seq, written) in sorted(by_ts.items())]


# -- what the reject store explains ----------------------------------------------------------


@dataclass
class _Rejected:
    numbers: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))  # seq found in the payload
    unnumbered: Counter[str] = field(default_factory=Counter)  # rejections in the window without a seq


def rejected_seqs(spool: Path, start: datetime, end: datetime, audit: ProductionAudit) -> _Rejected:
    found = _Rejected()
    for rejection in stored_rejections(spool, audit.skipped):
        if rejection.sensor_id is None:
            continue
        try:
            received = datetime.fromisoformat(rejection.received_at.replace("Z", "+00:00"))
            payload = base64.b64decode(rejection.payload_b64)
        except (ValueError, binascii.Error):
            continue
        if received < start:
            continue
        match = _SEQ_IN_PAYLOAD.search(payload)
        if match is not None:
            found.numbers[rejection.sensor_id].add(int(match.group(1)))
        elif received <= end + RECEIVE_SLACK:
            found.unnumbered[rejection.sensor_id] += 1
    return found


# -- the audit ---------------------------------------------------------------------------------


def production_audit(
    settings: InfluxSettings,
    registry: Registry,
    spool: Path,
    start: datetime,
    end: datetime,
    dropped: Mapping[str, int] | None = None,
) -> ProductionAudit:
    """Reconcile the spool with InfluxDB over [start, end) (whole hours are what InfluxDB is asked for).

    `dropped`: per sensor, readings known to be left out on purpose before the broker (the simulator's
    `drop` fault, from its manifests); up to that many seq gaps of the sensor are not losses.
    """
    dropped = dropped or {}
    audit = ProductionAudit(start, end)
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    seen = accepted_readings(spool, start_ms, end_ms, audit)
    rejected = rejected_seqs(spool, start, end, audit)
    with QueryClient(settings) as client:
        points = stored_points(client, settings, registry.kinds, start, end)
    stored: dict[str, dict[int, int]] = defaultdict(dict)  # sensor_id -> hour (epoch ms) -> distinct points
    for (sensor_id, hour), count in points.items():
        stored[sensor_id][int(hour.timestamp() * 1000)] = count
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    window_end_ms = min(end_ms, now_ms)

    for sensor_id in sorted(seen):
        sensor = seen[sensor_id]
        row = audit.vendors.setdefault(sensor.vendor, VendorFigures())
        row.sensors += 1
        readings = _distinct(sensor)
        _reconcile(audit, row, sensor_id, sensor.vendor, readings, stored.get(sensor_id, {}))
        gaps = SensorGaps(sensor.vendor, sensor.kind)
        _seq_gaps(gaps, readings, rejected.numbers.get(sensor_id, set()), rejected.unnumbered[sensor_id])
        gaps.seq_dropped = min(gaps.seq_gaps, dropped.get(sensor_id, 0))
        gaps.seq_gaps -= gaps.seq_dropped
        kind = registry.kinds.get(sensor.kind)
        if kind is not None:
            _silences(gaps, [ts for ts, _, _ in readings], kind.interval_s * 1000, start_ms, window_end_ms)
        row.seq_gaps += gaps.seq_gaps
        row.seq_rejected += gaps.seq_rejected
        row.seq_dropped += gaps.seq_dropped
        due = sum(n for _, _, n in gaps.silences)
        row.sensors_with_gaps += bool(due)
        row.readings_due += due
        if gaps.seq_gaps or gaps.seq_rejected or gaps.seq_dropped or gaps.silences:
            audit.sensors[sensor_id] = gaps
        if gaps.seq_gaps:
            ranges = ", ".join(_range(a, b) for a, b in gaps.seq_missing[:3])
            more = ", ..." if len(gaps.seq_missing) > 3 else ""
            beyond = f", besides {gaps.seq_dropped} the simulator dropped on purpose" if gaps.seq_dropped else ""
            audit.problems.append(
                f"{sensor.vendor} {sensor_id}: {gaps.seq_gaps} sequence numbers skipped ({ranges}{more}{beyond}): "
                "readings lost before ingest"
            )
    for sensor_id, hours in stored.items():
        if sensor_id not in seen:  # InfluxDB has points of a sensor this spool has nothing of in the window
            vendor = registry.sensors[sensor_id].vendor if sensor_id in registry.sensors else "?"
            audit.vendors.setdefault(vendor, VendorFigures()).extra += sum(hours.values())
    for listed in registry.sensors.values():
        interval_ms = registry.kinds[listed.kind].interval_s * 1000
        if listed.id not in seen and _due(window_end_ms - start_ms, interval_ms, True) >= SILENCE_MIN_DUE:
            audit.vendors.setdefault(listed.vendor, VendorFigures()).silent_sensors += 1
    return audit


def _reconcile(
    audit: ProductionAudit,
    row: VendorFigures,
    sensor_id: str,
    vendor: str,
    readings: Sequence[tuple[int, int | None, bool]],
    stored: dict[int, int],
) -> None:
    """Accepted against stored per hour of one sensor."""
    per_hour: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # hour -> [accepted, pending]
    for ts, _, written in readings:
        figures = per_hour[ts - ts % HOUR_MS]
        figures[0] += 1
        figures[1] += not written
    for hour_ms, (accepted, pending) in sorted(per_hour.items()):
        hour = datetime.fromtimestamp(hour_ms / 1000, UTC)
        have = stored.get(hour_ms, 0)
        row.accepted += accepted
        row.stored += have
        row.pending += pending
        missing = accepted - pending - have
        if missing > 0:
            row.missing += missing
            audit.missing.append(
                {"vendor": vendor, "sensor_id": sensor_id, "hour": f"{hour:%Y-%m-%dT%H}:00:00Z"}
                | {"accepted": accepted, "pending": pending, "stored": have, "missing": missing}
            )
            audit.problems.append(
                f"{vendor} {sensor_id} {hour:%Y-%m-%dT%H}Z: {missing} accepted readings not in InfluxDB"
            )
        row.extra += max(have - accepted, 0)
    row.extra += sum(count for hour_ms, count in stored.items() if hour_ms not in per_hour)


def _seq_gaps(
    gaps: SensorGaps, readings: Sequence[tuple[int, int | None, bool]], rejected: set[int], unnumbered: int
) -> None:
    """Skipped seq numbers, less those the reject store explains (by number, then by count)."""
    for first, end in missing_ranges(seq for _, seq, _ in readings):
        explained = sum(1 for n in rejected if first <= n < end)
        by_count = min(end - first - explained, unnumbered)
        unnumbered -= by_count
        gaps.seq_rejected += explained + by_count
        left = end - first - explained - by_count
        if left:
            gaps.seq_gaps += left
            gaps.seq_missing.append((first, end))


def _silences(gaps: SensorGaps, times: Sequence[int], interval_ms: int, start_ms: int, end_ms: int) -> None:
    """Silences (SILENCE_MIN_DUE readings or more due in a row, none there) and the readings due in them."""
    edges = [(start_ms, times[0], True)] if times else []
    edges += [(a, b, False) for a, b in itertools.pairwise(times)]
    if times:
        edges.append((times[-1], max(end_ms, times[-1]), True))
    for a, b, at_edge in edges:
        due = _due(b - a, interval_ms, at_edge)
        if due >= SILENCE_MIN_DUE:
            gaps.silences.append((_iso(a), _iso(b), due))


def _due(span_ms: int, interval_ms: int, at_edge: bool) -> int:
    """Readings due strictly between two readings `span_ms` apart, or between a reading and a window edge
    (the edge is not a reading itself); a reading may come half an interval early or late."""
    intervals = span_ms / interval_ms
    return int(intervals - 0.5) if at_edge else max(round(intervals) - 1, 0)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _range(first: int, end: int) -> str:
    return str(first) if end == first + 1 else f"{first}..{end - 1}"


# -- output ------------------------------------------------------------------------------------


def as_json(audit: ProductionAudit) -> dict[str, Any]:
    return {
        "mode": "production",
        "from": _iso(int(audit.start.timestamp() * 1000)),
        "to": _iso(int(audit.end.timestamp() * 1000)),
        "balanced": audit.balanced,
        "vendors": {v: asdict(row) for v, row in sorted(audit.vendors.items())},
        "total": asdict(audit.total()),
        "missing": audit.missing,
        "spool_lost": audit.spool_lost,
        "sensors": {s: asdict(g) for s, g in sorted(audit.sensors.items())},
        "problems": audit.problems,
        "skipped": audit.skipped,
    }


COLUMNS = (
    ("vendor", "vendor"),
    ("sensors", "sensors"),
    ("accepted", "accepted"),
    ("stored", "in InfluxDB"),
    ("pending", "pending"),
    ("missing", "missing"),
    ("extra", "not in spool"),
    ("seq_gaps", "seq gaps"),
    ("seq_rejected", "seq rejected"),
    ("seq_dropped", "dropped on purpose"),
    ("sensors_with_gaps", "sensors with gaps"),
    ("readings_due", "due in gaps"),
    ("silent_sensors", "silent sensors"),
)


def print_production(audit: ProductionAudit, console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    window = f"{audit.start:%Y-%m-%d %H:%M}Z .. {audit.end:%Y-%m-%d %H:%M}Z"
    table = Table(title=f"production audit (spool against InfluxDB), {window}")
    total = audit.total()
    # Intended drops exist only in the demo (the simulator's `drop` fault): no empty column in production.
    columns = [(name, title) for name, title in COLUMNS if name != "seq_dropped" or total.seq_dropped]
    for name, title in columns:
        table.add_column(title, justify="left" if name == "vendor" else "right", no_wrap=name == "vendor")
    for vendor, row in [*sorted(audit.vendors.items()), ("total", total)]:
        cells = [f"{getattr(row, name):,}" for name, _ in columns[1:]]
        style = "bold" if vendor == "total" else ("red" if not row.balanced else None)
        table.add_row(vendor, *cells, style=style)
    console.print(table)
    for problem in audit.problems[:DETAIL_LINES]:
        console.print(f"[red]unbalanced:[/] {problem}", soft_wrap=True)
    if len(audit.problems) > DETAIL_LINES:
        console.print(f"[red]... and {len(audit.problems) - DETAIL_LINES} more (--json lists them all)[/]")
    silent = [(s, g) for s, g in sorted(audit.sensors.items()) if g.silences]
    for sensor_id, gaps in silent[:DETAIL_LINES]:
        worst = max(gaps.silences, key=lambda s: s[2])
        console.print(
            f"[yellow]gap:[/] {gaps.vendor} {sensor_id}: {sum(n for _, _, n in gaps.silences)} readings due in "
            f"{len(gaps.silences)} silence(s), the longest {worst[0]} .. {worst[1]} ({worst[2]} due)",
            soft_wrap=True,
        )
    if len(silent) > DETAIL_LINES:
        console.print(f"[yellow]... and {len(silent) - DETAIL_LINES} more sensors with gaps[/]")
    if audit.skipped:
        console.print(f"[yellow]skipped {len(audit.skipped):,} unreadable spool records or segments:[/]")
        for reason in audit.skipped[:5]:
            console.print(f"  {reason}", soft_wrap=True)
    console.print(verdict(audit), style="green" if audit.balanced else "bold red", soft_wrap=True)


def verdict(audit: ProductionAudit) -> str:
    total = audit.total()
    state = "balanced" if audit.balanced else "NOT balanced"
    intended = (
        f"{total.seq_dropped:,} seq gaps are readings the simulator's drop fault never sent, on purpose: not losses; "
        if total.seq_dropped
        else ""
    )
    return (
        f"production audit: {state}: {total.accepted:,} readings accepted, {total.stored:,} stored, "
        f"{total.pending:,} pending, {total.missing + audit.spool_lost:,} lost after ingest, "
        f"{total.seq_gaps:,} lost before ingest (seq gaps), {total.seq_rejected:,} rejected; {intended}"
        f"{total.sensors_with_gaps:,} sensors with gaps, {total.silent_sensors:,} silent"
    )


def default_window(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last 24 hours, in whole hours (the current one included)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    end = now.replace(minute=0, second=0, microsecond=0) + HOUR
    return end - timedelta(hours=25), end
