"""`smartcity audit --production`: the spool against InfluxDB, seq gaps and silences, without manifests.

One real `smartcity ingest` takes readings through the session's Mosquitto into
InfluxDB, in hours of their own (days back, where no other test writes); each
test audits its own window of them.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from deploy.cli import main
from deploy.production_audit import ProductionAudit, print_production, production_audit
from ingest.spool import StreamWriter
from sensors.registry import Sensor, default_registry
from sensors.spool import READINGS, closed_segments
from storage.settings import InfluxSettings
from tests.ingest.helpers import IngestProcess, Message, Publisher, ingest_env, wait_for_points
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

REGISTRY = default_registry()
MINUTE, HOUR = 60_000, 3_600_000
NOW = int(time.time() * 1000)
# Whole hours 60-71 h back, one window per test: inside the 72 h acceptance window, past every other test's slots.
CLEAN, GAPS, DELETED, PENDING = (NOW - NOW % HOUR - (60 + 3 * i) * HOUR for i in range(4))
# Four sensors of four vendors, of kinds that report once a minute.
EVERY_MINUTE = [s for s in REGISTRY.sensors.values() if REGISTRY.kinds[s.kind].interval_s == 60]
SENSORS: list[Sensor] = [
    next(s for s in EVERY_MINUTE if s.vendor == v) for v in dict.fromkeys(s.vendor for s in EVERY_MINUTE)
][:4]


def payload(sensor: Sensor, ts: int, seq: int | None, *, bad: bool = False) -> Message:
    kind = REGISTRY.kinds[sensor.kind]
    values = {m.name: round(m.min + (m.max - m.min) / 4, 2) for m in kind.metrics}
    if bad:  # out of range: rejected, with its seq in the reject store
        first = kind.metrics[0]
        values[first.name] = first.max + 1
    document: dict[str, Any] = {"ts": ts, "values": values} | ({} if seq is None else {"seq": seq})
    return Message(sensor.topic, json.dumps(document).encode(), sensor.id, sensor.kind, ts, values)


def two_hours(sensor: Sensor, start: int, skip: range = range(0), seq: bool = True) -> list[Message]:
    """A reading a minute for two hours (5 s past each minute); `skip` minutes are never sent."""
    return [payload(sensor, start + i * MINUTE + 5000, i if seq else None) for i in range(120) if i not in skip]


@dataclass(frozen=True)
class Ingested:
    home: Path
    accepted: dict[int, list[Message]]  # window start -> readings ingest accepted there


@pytest.fixture(scope="module")
def stack(own_stack: StackHandle) -> StackHandle:
    """This module checks exact contents of the database: a stack no other module writes to."""
    return own_stack


@pytest.fixture(scope="module")
def ingested(stack: StackHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingested]:
    a, b, c, d = SENSORS
    clean = two_hours(a, CLEAN)
    # The counter restarts at 0 after an hour (a reboot): no gap. Another sensor sends no seq and is
    # silent for 10 minutes (minutes 50-59): a gap of 10 readings due, no seq gap.
    clean = [payload(a, m.ts, (m.ts - CLEAN) // MINUTE % 60) for m in clean]
    clean += two_hours(b, CLEAN, skip=range(50, 60), seq=False)
    # Seq 30-34 never sent (lost before the broker); seq 50 of another sensor sent but rejected.
    gaps = two_hours(c, GAPS, skip=range(30, 35)) + two_hours(d, GAPS, skip=range(50, 51))
    rejected = [payload(d, GAPS + 50 * MINUTE + 5000, 50, bad=True)]
    deleted = two_hours(a, DELETED)
    redelivered = [clean[7], gaps[9]]  # a QoS 1 resend: in the spool twice, one point
    home = tmp_path_factory.mktemp("production-audit") / "home"
    env = ingest_env(stack, home, client_id="prodaudit-it")
    with IngestProcess(env, home.parent / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish([*clean, *gaps, *rejected, *deleted, *redelivered])
        publisher.close()
        wait_for_points(stack, clean + gaps + deleted, timeout_s=60)
        assert ingest.terminate() == 0
    yield Ingested(home, {CLEAN: clean, GAPS: gaps, DELETED: deleted})


def audit(
    stack: StackHandle, home: Path, start: int, monkeypatch: pytest.MonkeyPatch, *, as_json: bool = True
) -> tuple[int, Any]:
    """Run `smartcity audit --production [--json]` over the two hours from `start`: (exit code, result or text)."""
    for key, value in stack.env(home=home).items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    window = [f"{datetime.fromtimestamp(t / 1000, UTC):%Y-%m-%dT%H:%M:%SZ}" for t in (start, start + 2 * HOUR)]
    try:
        args = ["audit", "--production", "--from", window[0], "--to", window[1], "--home", str(home)]
        code = main(args + ["--json"] * as_json)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, json.loads(out.getvalue()) if as_json else out.getvalue()


def test_balanced_after_a_clean_ingest_with_a_restart_and_a_silence(
    stack: StackHandle, ingested: Ingested, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = SENSORS[:2]
    code, result = audit(stack, ingested.home, CLEAN, monkeypatch)
    assert code == 0, result["problems"]
    assert result["balanced"] and result["problems"] == [] and result["spool_lost"] == 0
    total = result["total"]
    assert total["accepted"] == total["stored"] == len(ingested.accepted[CLEAN]) == 230
    assert total["missing"] == total["pending"] == total["seq_gaps"] == total["seq_rejected"] == 0
    assert result["vendors"][a.vendor]["sensors"] == 1 and result["vendors"][a.vendor]["readings_due"] == 0
    assert result["vendors"][b.vendor]["sensors_with_gaps"] == 1 and result["vendors"][b.vendor]["readings_due"] == 10
    [silence] = result["sensors"][b.id]["silences"]
    assert silence[2] == 10 and silence[0].endswith(":49:05Z") and silence[1].endswith(":00:05Z")
    assert a.id not in result["sensors"]  # the restart of its counter is not a gap
    silent = sum(1 for s in REGISTRY.sensors.values() if s.id not in (a.id, b.id))
    assert total["silent_sensors"] == silent


def test_seq_gaps_are_counted_exactly_and_a_rejected_number_is_not_a_loss(
    stack: StackHandle, ingested: Ingested, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, d = SENSORS[2:4]
    code, result = audit(stack, ingested.home, GAPS, monkeypatch)
    assert code == 1
    assert result["total"]["missing"] == 0 and result["total"]["accepted"] == result["total"]["stored"] == 234
    assert result["vendors"][c.vendor]["seq_gaps"] == 5 and result["vendors"][c.vendor]["seq_rejected"] == 0
    assert result["vendors"][d.vendor]["seq_gaps"] == 0 and result["vendors"][d.vendor]["seq_rejected"] == 1
    assert result["sensors"][c.id]["seq_missing"] == [[30, 35]]
    assert result["problems"] == [
        f"{c.vendor} {c.id}: 5 sequence numbers skipped (30..34): readings lost before ingest"
    ]
    # The lost readings are also a silence; one missing reading alone (the rejected one) is not.
    assert result["sensors"][c.id]["silences"][0][2] == 5 and result["sensors"][d.id]["silences"] == []


def test_the_simulators_intended_drops_are_shown_as_such_and_a_gap_beyond_them_is_still_a_loss(
    stack: StackHandle, ingested: Ingested
) -> None:
    """What `smartcity demo` does with its manifests' `drop` counts (seq 30-34 of sensor c never sent)."""
    c = SENSORS[2]
    settings = InfluxSettings.from_env(stack.env(home=ingested.home))
    start, end = (datetime.fromtimestamp(t / 1000, UTC) for t in (GAPS, GAPS + 2 * HOUR))

    def run(dropped: dict[str, int]) -> tuple[ProductionAudit, str]:
        found = production_audit(settings, REGISTRY, ingested.home / "spool", start, end, dropped=dropped)
        console = Console(file=io.StringIO(), width=200)
        print_production(found, console)
        return found, " ".join(console.file.getvalue().split())  # type: ignore[attr-defined]

    found, text = run({c.id: 5, SENSORS[0].id: 3})  # sensor a dropped nothing here: no gap, nothing to explain
    assert found.balanced and found.problems == []
    assert (found.total().seq_gaps, found.total().seq_dropped, found.total().seq_rejected) == (0, 5, 1)
    assert "production audit: balanced: 234 readings accepted, 234 stored, 0 pending, 0 lost after ingest" in text
    assert "5 seq gaps are readings the simulator's drop fault never sent, on purpose: not losses" in text
    assert "dropped on purpose" in text and "unbalanced" not in text

    found, text = run({c.id: 3})  # two numbers more were skipped than the simulator dropped: a loss
    assert not found.balanced and (found.total().seq_gaps, found.total().seq_dropped) == (2, 3)
    assert found.problems == [
        f"{c.vendor} {c.id}: 2 sequence numbers skipped (30..34, besides 3 the simulator dropped on purpose): "
        "readings lost before ingest"
    ]
    assert "production audit: NOT balanced:" in text and "unbalanced:" in text


def test_points_deleted_from_influxdb_are_reported_exactly_per_sensor_and_hour(
    stack: StackHandle, ingested: Ingested, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = SENSORS[0]
    first, last = DELETED + HOUR + 10 * MINUTE, DELETED + HOUR + 12 * MINUTE + 5000  # minutes 70, 71, 72
    stack.influx_query(
        f"DELETE FROM \"{a.kind}\" WHERE sensor_id = '{a.id}' AND time >= {first}ms AND time <= {last}ms",
        db="smartcity",
    )
    code, result = audit(stack, ingested.home, DELETED, monkeypatch)
    assert code == 1
    assert result["vendors"][a.vendor]["missing"] == 3 and result["total"]["stored"] == 117
    hour = f"{datetime.fromtimestamp((DELETED + HOUR) / 1000, UTC):%Y-%m-%dT%H}"
    assert result["missing"] == [
        {"vendor": a.vendor, "sensor_id": a.id, "hour": f"{hour}:00:00Z"}
        | {"accepted": 60, "pending": 0, "stored": 57, "missing": 3}
    ]
    assert result["problems"] == [f"{a.vendor} {a.id} {hour}Z: 3 accepted readings not in InfluxDB"]
    code, text = audit(stack, ingested.home, DELETED, monkeypatch, as_json=False)
    assert code == 1
    assert f"unbalanced: {a.vendor} {a.id} {hour}Z: 3 accepted readings not in InfluxDB" in text
    assert "production audit: NOT balanced: 120 readings accepted, 117 stored, 0 pending, 3 lost after ingest" in text


def test_readings_the_raw_writer_has_not_reached_are_pending_not_missing(
    stack: StackHandle, ingested: Ingested, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = SENSORS[0]
    stream = ingested.home / "spool" / "no-writer-yet"  # no raw-writer offset: nothing of it written
    with StreamWriter[int](stream, segment_max_bytes=2**20, segment_max_age_s=60) as writer:
        writer.append_readings(
            [a.reading(PENDING + i * MINUTE, {REGISTRY.kinds[a.kind].metrics[0].name: 10.0}, seq=i) for i in range(30)],
            0,
        )
    assert [s.stream for s in closed_segments(ingested.home / "spool", READINGS, PENDING, PENDING + 2 * HOUR)] == [
        "no-writer-yet"
    ]
    code, result = audit(stack, ingested.home, PENDING, monkeypatch)
    assert code == 0, result["problems"]
    assert (result["total"]["accepted"], result["total"]["pending"], result["total"]["missing"]) == (30, 30, 0)


def test_a_closed_segment_cut_short_counts_its_lost_records(
    stack: StackHandle, ingested: Ingested, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    a = SENSORS[0]
    home = tmp_path / "home"
    stream = home / "spool" / "cut"
    with StreamWriter[int](stream, segment_max_bytes=2**20, segment_max_age_s=60) as writer:
        writer.append_readings(
            [a.reading(PENDING + i * MINUTE, {REGISTRY.kinds[a.kind].metrics[0].name: 10.0}, seq=i) for i in range(10)],
            0,
        )
    [segment] = closed_segments(home / "spool", READINGS)
    data = segment.path.read_bytes()
    kept = data[: len(data) * 6 // 10]  # cut to 60 %, as the outsider did
    segment.path.write_bytes(kept)
    intact = kept.count(b"\n")
    code, result = audit(stack, home, PENDING, monkeypatch)
    assert code == 1 and result["spool_lost"] == 10 - intact > 0
    assert f"damaged closed segment: {10 - intact} of its 10 records lost, {intact} intact" in result["problems"][0]
    assert result["total"]["accepted"] == result["total"]["pending"] == intact  # never written: no raw writer


def test_production_mode_refuses_manifests_and_an_empty_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "run.json"
    manifest.write_text("{}")
    assert main(["audit", "--production", "--manifest", str(manifest)]) == 2
    assert "--manifest and --production exclude each other" in capsys.readouterr().err
    args = ["audit", "--production", "--from", "2026-12-02T12:00:00", "--to", "2026-12-02T12:00:00"]
    assert main(args) == 2
    assert "--from 2026-12-02T05:00Z is not before --to 2026-12-02T05:00Z" in capsys.readouterr().err  # noon in Bangkok
