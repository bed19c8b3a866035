"""`smartcity pipeline run` over a damaged spool: it skips and reports what it cannot read, never aborts."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.cli import main
from sensors.registry import Registry
from sensors.spool import meta_path
from tests.pipelines.spooldata import MINUTE, T0, reading, write_segment
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

# A day of its own in the session's InfluxDB: 2025-11-20.
DAY = T0 - 5 * 24 * 3_600_000


def run_pipelines(home: Path, stack: StackHandle, monkeypatch: pytest.MonkeyPatch) -> int:
    for key, value in stack.env(home=home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SMARTCITY_PIPELINE_COLUMN_CACHE", "false")
    return main(["pipeline", "run", "--from", "2025-11-20T00:00:00Z", "--to", "2025-11-20T02:00:00Z"])


def segments(home: Path, registry: Registry) -> list[Path]:
    sensor = registry.sensors["pkt-aq-001"]
    paths = []
    for seq in (1, 2):
        readings = [reading(sensor, DAY + (seq - 1) * 3_600_000 + i * MINUTE, {"pm25": 10.0 + i}) for i in range(50)]
        paths.append(write_segment(home / "spool", seq, readings).path)
    return paths


def test_a_truncated_meta_json_skips_that_segment_with_one_line(
    stack: StackHandle,
    registry: Registry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    _, second = segments(home, registry)
    meta = meta_path(second)
    meta.write_bytes(meta.read_bytes()[:20])
    assert run_pipelines(home, stack, monkeypatch) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "50 readings from 1 segments" in out
    assert f"{meta}: unreadable segment metadata" in caplog.text
    assert "warning: 1 spool segments skipped for unreadable metadata" in err


def test_a_cut_segment_reports_exactly_the_readings_it_lost(
    stack: StackHandle,
    registry: Registry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    first, _ = segments(home, registry)
    lines = first.read_bytes().splitlines(keepends=True)
    first.write_bytes(b"".join(lines[:30]) + lines[30][:10])  # 30 whole lines and a torn one
    assert run_pipelines(home, stack, monkeypatch) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "80 readings from 2 segments" in out
    assert "warning: 20 readings lost in cut or damaged spool segments" in err
    assert f"{first}: 20 of its 50 readings do not verify" in caplog.text
