"""A short `smartcity demo` end to end: real stack, ingest processes, simulator, Beam, dashboards, audit, report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.servers import free_port
from deploy.stack import Stack

pytestmark = pytest.mark.system


def test_short_demo_balances_and_checks_every_panel_with_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ)
    env.pop("SMARTCITY_REGISTRY", None)
    command = [
        sys.executable, "-m", "deploy.cli", "demo", "--home", str(home), "--hours", "2", "--sensors", "80",
        "--minutes", "0.25", "--mqtt-port", str(free_port()), "--influx-port", str(free_port()),
        "--mqtt-tls-port", str(free_port()),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    finally:
        Stack(home).down()
    output = result.stdout + result.stderr
    check_log = home / "demo" / "dashboards-check.log"  # written when the check fails
    assert result.returncode == 0, output[-3000:] + (check_log.read_text()[-3000:] if check_log.exists() else "")
    stages = ("stack", "ingest", "replay", "drain", "backfill", "live", "settle", "dashboards", "audit", "production")
    for stage in (*stages, "report"):
        assert f"✓ {stage}" in output, stage
    flat = " ".join(output.split())  # rich wraps long stage lines
    audited = re.search(r"✓ audit [\d.]+ s (NOT balanced|balanced): [\d,]+ stored, ([\d,]+) lost", flat)
    assert audited is not None and audited.groups() == ("balanced", "0"), flat[-2000:]
    # Without manifests, per simulator run: nothing accepted lost, and the readings the drop fault left out on
    # purpose show as seq gaps, said to be that (not losses) and no more of them than were dropped.
    production = re.findall(
        r"✓ production [\d.]+ s (?:\(during live\) )?(replay|live): nothing accepted was lost \(([\d,]+) accepted, "
        r"([\d,]+) stored\); (?:the simulator dropped no reading in this run|([\d,]+) seq gaps are readings the "
        r"simulator dropped on purpose \(its drop fault left out ([\d,]+); SenML sensors send no seq\)), "
        r"no other seq gap",
        flat,
    )
    assert [run for run, *_ in production] == ["replay", "live"], flat[-3000:]
    for run, *figures in production:
        accepted, stored, gaps, dropped = (int(n.replace(",", "") or 0) for n in figures)
        # A reading dropped at a run's first or last slot leaves no gap in seq; every other one is one.
        assert accepted == stored > 0 and gaps <= dropped, (run, figures)
        if run == "replay":
            assert gaps > 0, figures
    assert "production audit: balanced" in flat and "NOT balanced" not in flat and "unbalanced" not in flat
    assert "not losses" in flat  # the production tables' verdicts say what the seq gaps are
    for during_live in ("backfill", "dashboards"):  # the replay's work overlaps the live minute
        assert re.search(rf"✓ {during_live} [\d.]+ s \(during live\)", flat), flat[-3000:]
    follow = re.search(r"✓ settle [\d.]+ s follow pipeline wrote ([\d,]+) points", flat)
    assert follow is not None and int(follow.group(1).replace(",", "")) > 0, flat[-3000:]
    assert "queries ran against" in output  # dashboards check --expect-data passed
    assert (home / "report" / "index.html").is_file()
    assert (home / "report" / "lanna.html").is_file()
    manifests = sorted((home / "manifests").glob("demo-*.json"))
    assert [p.name.rsplit("-", 1)[1] for p in manifests] == ["live.json", "replay.json"]
