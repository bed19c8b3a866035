"""`smartcity audit` over a damaged reject store: it skips and reports what it cannot read, never aborts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deploy.cli import main
from ingest.spool import StreamWriter
from sensors.reading import Rejection
from sensors.registry import default_registry
from sensors.spool import REJECTS, closed_segments, meta_path
from tests.servers import StackHandle

pytestmark = pytest.mark.integration


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def reject_store_and_manifest(home: Path) -> tuple[Path, Path]:
    """Three rejections of one sensor in the spool, and a manifest that sent exactly those three."""
    sensor = default_registry().sensors["pkt-aq-001"]
    now = datetime.now(UTC).replace(microsecond=0)
    writer: StreamWriter[int] = StreamWriter(home / "spool" / "ingest-1", segment_max_bytes=2**20, segment_max_age_s=60)
    for n in range(3):
        rejection = Rejection(
            code="invalid_json",
            detail="not JSON",
            topic=sensor.topic,
            received_at=_iso(now),
            payload_b64=f"bm90IGpzb24{n}",
            sensor_id=sensor.id,
            vendor=sensor.vendor,
        )
        writer.append_rejection(rejection, n)
    writer.close()
    manifest = home / "manifests" / "run.json"
    manifest.parent.mkdir(parents=True)
    run = {
        "started_at": _iso(now - timedelta(seconds=5)),
        "finished_at": _iso(now + timedelta(seconds=5)),
        "from": _iso(now - timedelta(hours=1)),
        "to": _iso(now),
    }
    manifest.write_text(
        json.dumps(
            {
                "run": run,
                "readings": [],
                "rejects": [{"sensor_id": sensor.id, "code": "invalid_json", "count": 3}],
                "sensors": {sensor.id: {"vendor": sensor.vendor, "kind": sensor.kind}},
                "totals": {"messages": 3, "duplicates": 0},
            }
        )
    )
    [segment] = closed_segments(home / "spool", REJECTS)
    return segment.path, manifest


def audit(stack: StackHandle, home: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    for key, value in stack.env(home=home).items():
        monkeypatch.setenv(key, value)
    try:
        return main(["audit", "--manifest", str(manifest), "--home", str(home)])
    except SystemExit as exit_:  # the audit's verdict
        return int(exit_.code or 0)


def test_a_flipped_byte_in_a_rejects_segment_skips_that_record_only(
    stack: StackHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    segment, manifest = reject_store_and_manifest(home)
    data = bytearray(segment.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 20] ^= 0x01  # one flipped bit in the second record
    segment.write_bytes(bytes(data))
    assert audit(stack, home, manifest, monkeypatch) == 1  # one rejection is really not readable any more
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "pkt-aq-001: 1 'invalid_json' rejections not stored" in out
    assert "skipped 1 unreadable spool records or segments" in out
    assert f"{segment}:2: skipped a record that does not verify" in out


def test_a_truncated_meta_json_of_a_rejects_segment_is_reported_not_fatal(
    stack: StackHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    segment, manifest = reject_store_and_manifest(home)
    meta = meta_path(segment)
    meta.write_bytes(meta.read_bytes()[:15])
    assert audit(stack, home, manifest, monkeypatch) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "pkt-aq-001: 3 'invalid_json' rejections not stored" in out
    assert f"{meta}: unreadable segment metadata" in out


def test_a_cut_rejects_segment_keeps_its_whole_records(
    stack: StackHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    segment, manifest = reject_store_and_manifest(home)
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 30])  # the third record torn
    assert audit(stack, home, manifest, monkeypatch) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "pkt-aq-001: 1 'invalid_json' rejections not stored" in out
    assert f"{segment}:3: skipped a record that does not verify" in out
