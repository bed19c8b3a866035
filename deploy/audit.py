"""`smartcity audit`: published = stored + rejected, per vendor, sensor and hour.

It joins what was published (the simulator's manifests) with what InfluxDB
holds (distinct raw points per sensor and hour) and with the reject store
(reject segments of the spool), and explains every difference:

- a reading the manifest calls good must be stored exactly once per
  (sensor_id, ts): fewer points is a loss, more is unexplained;
- a message sent to be rejected must be in the reject store with its code
  (a QoS 1 redelivery may store a rejection twice: counted, not an error),
  or counted by ingest as not stored: a vendor over its reject store budget is
  answered on the reject topic but not kept, and ingest writes how many to
  `ingest_vendors.rejects_not_stored`; up to that many missing rejections of
  the vendor during the run are explained, and shown, never hidden;
- publishes the broker refused (ACL) never reached ingest and are not expected;
- publishes without a PUBACK when the simulator stopped ("unconfirmed") may or
  may not have arrived, so up to that many missing ones are explained.

Readings are compared over the manifest's time range (`from` .. `to`, or the
end of a live run), so points that earlier runs stored around it do not count.
Rejections are compared per sensor and code over the run (a rejected message
may carry no usable time). Exit 1 on any unexplained difference.

`--production` runs the audit that needs no manifests instead
(`deploy.production_audit`): the spool against InfluxDB, seq gaps and silences.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from sensors.cli import home_option, registry_from, registry_option
from sensors.contract import parse_topic
from sensors.errors import SmartcityError
from sensors.home import Home
from sensors.reading import CorruptRecord, Rejection, decode_rejection
from sensors.registry import Registry
from sensors.spool import OPEN_SUFFIX, REJECTS, closed_segments, read_rejections
from sensors.timeparse import time_option
from storage.query import QueryClient, ident
from storage.schema import INGEST_REJECTS_NOT_STORED, INGEST_VENDORS_MEASUREMENT, UNKNOWN_VENDOR
from storage.settings import InfluxSettings

HOUR = timedelta(hours=1)
# Rejections are matched to a run by when ingest received them; allow for ingest's backlog.
RECEIVE_SLACK = timedelta(minutes=30)


class AuditError(SmartcityError):
    """The audit cannot run (no manifest, unreadable files, database unreachable)."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    start: datetime  # readings with ts in [start, end) were published
    end: datetime
    sent_from: datetime  # wall-clock span of the run, for matching rejections
    sent_to: datetime
    good: dict[tuple[str, datetime], int]  # (sensor_id, hour) -> distinct readings that must be stored
    rejects: Counter[tuple[str, str]]  # (sensor_id, code) -> messages sent to be rejected
    unconfirmed: Counter[str]  # sensor_id -> publishes without a PUBACK
    vendor_of: dict[str, str]
    kind_of: dict[str, str]
    messages: int  # acknowledged by the broker
    duplicates: int


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def load_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        run = data["run"]
        started, finished = _time(run["started_at"]), _time(run["finished_at"])
        start = _time(run["from"])
        end = _time(run["to"]) if run.get("to") else finished
        if run.get("mode") == "live":  # a live run's end is written to the second: round it up
            end += timedelta(seconds=1)
        good = {(row["sensor_id"], _time(row["hour"])): int(row["good"]) for row in data["readings"]}
        rejects: Counter[tuple[str, str]] = Counter()
        for row in data["rejects"]:
            rejects[(row["sensor_id"], row["code"])] += int(row["count"])
        sensors = data["sensors"]
        unconfirmed = Counter({s: int(info.get("unconfirmed", 0)) for s, info in sensors.items()})
        vendor_of = {s: info["vendor"] for s, info in sensors.items()}
        kind_of = {s: info["kind"] for s, info in sensors.items()}
        messages, duplicates = int(data["totals"]["messages"]), int(data["totals"]["duplicates"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AuditError(f"{path}: not a readable simulator manifest ({type(err).__name__}: {err})") from err
    return Manifest(
        path, start, end, started, finished, good, rejects, unconfirmed, vendor_of, kind_of, messages, duplicates
    )


def other_runs_started(manifest: Manifest) -> list[datetime]:
    """When the other simulator runs of the manifest's folder started (to bound which rejections are whose)."""
    started = []
    for path in sorted(manifest.path.parent.glob("*.json")):
        if path.resolve() != manifest.path.resolve():
            moment = _run_started(path, path.stat().st_mtime_ns)
            if moment is not None:
                started.append(moment)
    return started


@functools.lru_cache(maxsize=256)
def _run_started(path: Path, mtime_ns: int) -> datetime | None:
    """`run.started_at` of a manifest, read once per file version (the demo polls the audit every second)."""
    try:
        return _time(json.loads(path.read_text(encoding="utf-8"))["run"]["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_manifests(home: Path) -> list[Path]:
    """The manifests of the newest simulator session: the newest file and those written just before it."""
    files = sorted(Home.from_env(home).manifests.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise AuditError(f"no manifest in {home / 'manifests'}: run 'smartcity simulate' first or pass --manifest")
    return files[-1:]


# -- what is stored --------------------------------------------------------------------


def stored_points(
    client: QueryClient, settings: InfluxSettings, kinds: Iterable[str], start: datetime, end: datetime
) -> dict[tuple[str, datetime], int]:
    """Distinct raw points per (sensor_id, hour) with ts in [start, end).

    `count(*)` per field gives it when every point has every field (what
    sensors send); where the field counts differ the points are fetched and
    counted exactly.
    """
    counts: dict[tuple[str, datetime], int] = {}
    for kind in sorted(kinds):
        series = client.query(
            "SELECT count(*) FROM {m} WHERE time >= {start} AND time < {end} GROUP BY time(1h), sensor_id",
            {"m": ident(settings.raw_rp, kind), "start": start, "end": end},
        )
        for s in series:
            sensor_id = s.tags.get("sensor_id", "")
            for row in s.values:
                fields = [v for v in row[1:] if v]
                if not fields:
                    continue
                hour = row[0]
                if min(fields) == max(fields):
                    counts[(sensor_id, hour)] = int(fields[0])
                else:
                    counts[(sensor_id, hour)] = _exact_points(
                        client, settings, kind, sensor_id, max(hour, start), min(hour + HOUR, end)
                    )
    return counts


def _exact_points(
    client: QueryClient, settings: InfluxSettings, kind: str, sensor_id: str, start: datetime, end: datetime
) -> int:
    series = client.query(
        "SELECT * FROM {m} WHERE sensor_id = {sensor} AND time >= {start} AND time < {end}",
        {"m": ident(settings.raw_rp, kind), "sensor": sensor_id, "start": start, "end": end},
    )
    return sum(len(s.values) for s in series)


def rejects_not_stored(client: QueryClient, settings: InfluxSettings, start: datetime, end: datetime) -> Counter[str]:
    """Per vendor (as ingest names it: the registry's, or `_unknown`), rejections ingest answered but did not
    keep in [start, end], from its self-metrics."""
    series = client.query(
        "SELECT sum({f}) FROM {m} WHERE time >= {start} AND time <= {end} GROUP BY vendor",
        {
            "f": ident(INGEST_REJECTS_NOT_STORED),
            "m": ident(settings.raw_rp, INGEST_VENDORS_MEASUREMENT),
            "start": start,
            "end": end,
        },
    )
    counts: Counter[str] = Counter()
    for s in series:
        for row in s.values:
            if row[1]:
                counts[s.tags.get("vendor", "")] += int(row[1])
    return counts


def stored_rejections(spool: Path, skipped: list[str] | None = None) -> Iterator[Rejection]:
    """Every rejection in the spool: closed reject segments and the verified lines of open ones. A record
    that does not verify, or a segment with unreadable metadata, is skipped and named in `skipped`."""
    for info in closed_segments(spool, REJECTS, skipped=skipped):
        yield from read_rejections(info.path, skipped)
    if spool.is_dir():
        for segment in sorted(spool.glob(f"*/{REJECTS}-*{OPEN_SUFFIX}")):
            with open(segment, "rb") as handle:
                for line in handle:
                    try:
                        yield decode_rejection(line)
                    except CorruptRecord:
                        break  # a torn tail of a segment being written


# -- the join ------------------------------------------------------------------------------


@dataclass
class Row:
    """Audit figures of one vendor (or one sensor)."""

    expected: int = 0
    stored: int = 0
    missing: int = 0
    extra: int = 0
    explained: int = 0
    rejects_expected: int = 0
    rejects_stored: int = 0
    rejects_missing: int = 0
    rejects_not_stored: int = 0  # missing from the store, and counted by ingest as over the vendor's budget
    rejects_unexpected: int = 0
    reject_duplicates: int = 0

    @property
    def balanced(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.rejects_missing == 0 and self.rejects_unexpected == 0


@dataclass
class AuditResult:
    vendors: dict[str, Row] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stored_by_code: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)  # unreadable spool records and segments, one line each

    @property
    def balanced(self) -> bool:
        return not self.problems

    def total(self) -> Row:
        total = Row()
        for row in self.vendors.values():
            for name in total.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(row, name))
        return total


def audit(
    manifests: Sequence[Manifest],
    settings: InfluxSettings,
    registry: Registry,
    spool: Path,
    start: datetime | None = None,
    end: datetime | None = None,
) -> AuditResult:
    result = AuditResult()
    rows = result.vendors
    rejections = list(stored_rejections(spool, result.skipped))  # read once, matched to each manifest's run below
    with QueryClient(settings) as client:
        for manifest in manifests:
            lo = max(manifest.start, start) if start else manifest.start
            hi = min(manifest.end, end) if end else manifest.end
            if lo >= hi:
                continue
            kinds = {manifest.kind_of[s] for s, _ in manifest.good} & set(registry.kinds)
            stored = stored_points(client, settings, kinds, lo, hi)
            expected = {key: n for key, n in manifest.good.items() if lo - HOUR < key[1] < hi}
            missing_by_sensor: Counter[str] = Counter()
            for key in sorted(set(expected) | {k for k in stored if k[0] in manifest.vendor_of}):
                sensor_id, hour = key
                vendor = manifest.vendor_of.get(sensor_id, "?")
                row = rows.setdefault(vendor, Row())
                want, have = expected.get(key, 0), stored.get(key, 0)
                row.expected += want
                row.stored += have
                if have < want:
                    missing_by_sensor[sensor_id] += want - have
                elif have > want:
                    row.extra += have - want
                    result.problems.append(f"{vendor} {sensor_id} {hour:%Y-%m-%dT%H}Z: {have - want} unexpected points")
            for sensor_id, missing in sorted(missing_by_sensor.items()):
                vendor = manifest.vendor_of[sensor_id]
                explained = min(missing, manifest.unconfirmed[sensor_id])
                rows[vendor].explained += explained
                if missing > explained:
                    rows[vendor].missing += missing - explained
                    result.problems.append(f"{vendor} {sensor_id}: {missing - explained} readings not stored")

            window_from, window_to = manifest.sent_from, manifest.sent_to + RECEIVE_SLACK
            later = [t for t in other_runs_started(manifest) if t > manifest.sent_from]
            if later:  # rejections received once the next simulator run started belong to that run
                window_to = min(window_to, min(later))
            seen: Counter[tuple[str, str]] = Counter()
            distinct: set[tuple[str, str, str, str]] = set()
            for rejection in rejections:
                received = _time(rejection.received_at)
                parts = parse_topic(rejection.topic)
                sensor_id = rejection.sensor_id or (parts.sensor_id if parts else "")
                if not window_from <= received <= window_to or sensor_id not in manifest.vendor_of:
                    continue
                seen[(sensor_id, rejection.code)] += 1
                # The digest tells two payloads apart (records before it existed: the payload's first 4 KiB).
                payload_id = rejection.payload_sha256 or rejection.payload_b64
                distinct.add((sensor_id, rejection.code, rejection.topic, payload_id))
                result.stored_by_code[rejection.code] += 1
            distinct_counts = Counter((sensor_id, code) for sensor_id, code, _, _ in distinct)
            not_stored = rejects_not_stored(client, settings, window_from, window_to)
            for reject_key in sorted(set(manifest.rejects) | set(seen)):
                sensor_id, code = reject_key
                vendor = manifest.vendor_of.get(sensor_id, "?")
                row = rows.setdefault(vendor, Row())
                want = manifest.rejects.get(reject_key, 0)
                have, unique = seen.get(reject_key, 0), distinct_counts.get(reject_key, 0)
                row.rejects_expected += want
                row.rejects_stored += have
                row.reject_duplicates += have - unique
                if unique < want:
                    # Explained up to the count ingest wrote of its vendor's rejections it did not keep.
                    counted_as = registry.sensors[sensor_id].vendor if sensor_id in registry.sensors else UNKNOWN_VENDOR
                    explained = min(want - unique, not_stored[counted_as])
                    not_stored[counted_as] -= explained
                    row.rejects_not_stored += explained
                    if want - unique > explained:
                        row.rejects_missing += want - unique - explained
                        result.problems.append(
                            f"{vendor} {sensor_id}: {want - unique - explained} '{code}' rejections not stored "
                            "(and not counted as over the vendor's budget)"
                        )
                elif unique > want:
                    row.rejects_unexpected += unique - want
                    result.problems.append(f"{vendor} {sensor_id}: {unique - want} unexpected '{code}' rejections")
    return result


def describe(manifests: Sequence[Manifest]) -> str:
    spans = ", ".join(f"{m.start:%Y-%m-%d %H:%M}..{m.end:%H:%M}Z" for m in manifests)
    return f"{len(manifests)} manifest(s): {spans}"


def as_json(result: AuditResult) -> dict[str, Any]:
    return {
        "balanced": result.balanced,
        "vendors": {v: row.__dict__ for v, row in sorted(result.vendors.items())},
        "problems": result.problems,
        "rejections_by_code": dict(sorted(result.stored_by_code.items())),
        "skipped": result.skipped,
    }


# -- command line ---------------------------------------------------------------------------


def _whole_hour(moment: datetime | None, up: bool) -> datetime | None:
    if moment is None:
        return None
    floor = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return floor + HOUR if up and floor != moment else floor


@click.command("audit")
@click.option(
    "--production",
    is_flag=True,
    help="Without manifests: the spool (what ingest acknowledged) against InfluxDB per vendor, sensor and hour, "
    "plus seq gaps and silences per sensor [default window: the last 24 h].",
)
@click.option(
    "--manifest",
    "manifest_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Simulator manifest (repeatable) [default: the newest in HOME/manifests].",
)
@time_option("--from", "start", help="Only from this time (rounded down to the hour).")
@time_option("--to", "end", help="Only up to this time (rounded up to the hour).")
@home_option("manifests in HOME/manifests, the spool and reject store in HOME/spool")
@click.option("--json", "as_json_output", is_flag=True, help="Print the result as JSON.")
@registry_option
def audit_command(
    production: bool,
    manifest_paths: Sequence[Path],
    start: datetime | None,
    end: datetime | None,
    home: Path,
    as_json_output: bool,
    registry_paths: Sequence[Path],
) -> None:
    """Check published = stored + rejected per vendor, sensor and hour; exit 1 on any unexplained difference.

    \b
    Two modes:
      smartcity audit                 the simulator's manifests: published = stored + rejected
      smartcity audit --production    no manifests: accepted (the spool) = stored (InfluxDB), per
                                      vendor, sensor and hour; seq gaps (readings lost before
                                      ingest) and silences (from each kind's interval_s) per sensor;
                                      exit 1 when an accepted reading is not in InfluxDB, a spool
                                      segment lost records, or a seq gap is not a rejection

    \b
    Examples:
      smartcity audit --production --from 2026-12-01T00:00:00 --to 2026-12-02T00:00:00
      smartcity audit --production --json | jq .total
    """
    if production:
        if manifest_paths:
            raise click.UsageError("--manifest and --production exclude each other: production has no manifests")
        _production(home, start, end, as_json_output, registry_from(registry_paths))
        return
    manifests = [load_manifest(p) for p in (manifest_paths or latest_manifests(home))]
    settings = InfluxSettings.from_env()
    result = audit(
        manifests,
        settings,
        registry_from(registry_paths),
        Home.from_env(home).spool,
        _whole_hour(start, False),
        _whole_hour(end, True),
    )
    if as_json_output:
        click.echo(json.dumps(as_json(result), indent=1))
    else:
        print_result(result, describe(manifests))
    if not result.balanced:
        raise SystemExit(1)


def _production(
    home: Path, start: datetime | None, end: datetime | None, as_json_output: bool, registry: Registry
) -> None:
    from deploy import production_audit as prod  # it imports this module

    default_start, default_end = prod.default_window()
    lo, hi = _whole_hour(start, False) or default_start, _whole_hour(end, True) or default_end
    if lo >= hi:
        raise click.BadParameter(f"--from {lo:%Y-%m-%dT%H:%M}Z is not before --to {hi:%Y-%m-%dT%H:%M}Z")
    result = prod.production_audit(InfluxSettings.from_env(), registry, Home.from_env(home).spool, lo, hi)
    if as_json_output:
        click.echo(json.dumps(prod.as_json(result), indent=1))
    else:
        prod.print_production(result)
    if not result.balanced:
        raise SystemExit(1)


def print_result(result: AuditResult, what: str, console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 130)
    table = Table(title=f"audit of {what}")
    for column in (
        "vendor",
        "good sent",
        "stored",
        "lost",
        "extra",
        "unconfirmed",
        "rejects sent",
        "rejects kept",
        "not kept (budget)",
        "redelivered",
    ):
        table.add_column(column, justify="left" if column == "vendor" else "right")
    for vendor, row in [*sorted(result.vendors.items()), ("total", result.total())]:
        table.add_row(
            vendor,
            f"{row.expected:,}",
            f"{row.stored:,}",
            f"{row.missing:,}",
            f"{row.extra:,}",
            f"{row.explained:,}",
            f"{row.rejects_expected:,}",
            f"{row.rejects_stored:,}",
            f"{row.rejects_not_stored:,}",
            f"{row.reject_duplicates:,}",
            style="bold" if vendor == "total" else ("red" if not row.balanced else None),
        )
    console.print(table)
    for problem in result.problems[:20]:
        console.print(f"[red]unexplained:[/] {problem}")
    if len(result.problems) > 20:
        console.print(f"[red]... and {len(result.problems) - 20} more[/]")
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped):,} unreadable spool records or segments:[/]")
        for reason in result.skipped[:5]:
            console.print(f"  {reason}", soft_wrap=True)
    total = result.total()
    verdict = "balanced" if result.balanced else "NOT balanced"
    console.print(
        f"audit: {verdict}: {total.expected:,} readings published, {total.stored:,} stored, {total.missing:,} lost; "
        f"{total.rejects_expected:,} rejections expected, {total.rejects_stored - total.reject_duplicates:,} kept, "
        f"{total.rejects_not_stored:,} answered but not kept (over a vendor's reject store budget)"
    )
