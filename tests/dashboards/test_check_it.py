"""Every generated panel, variable and alert query runs against the real InfluxDB and returns data."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import pytest

from dashboards import check
from dashboards.build import all_panels
from dashboards.provisioning import Provisioning, generate
from sensors.registry import default_registry
from storage.query import QueryClient
from storage.settings import InfluxSettings
from tests.dashboards.data import write_data_set
from tests.servers import StackHandle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(stack: StackHandle) -> InfluxSettings:
    settings = InfluxSettings.from_env(stack.env())
    write_data_set(default_registry(), settings)
    return settings


@pytest.fixture(scope="module")
def provisioning() -> Provisioning:
    return generate(default_registry())


@pytest.fixture(scope="module")
def results(settings: InfluxSettings, provisioning: Provisioning) -> list[check.Result]:
    with QueryClient(settings) as client:
        checker = check.Checker(client)
        out = [r for d in provisioning.dashboards for r in checker.dashboard(d)]
        return out + checker.rules(provisioning.rule_groups)


def test_every_query_is_accepted_by_influxdb(results: list[check.Result]) -> None:
    errors = [(r.where, r.error, r.query) for r in results if r.error]
    assert errors == []
    assert check.failures(results, expect_data=True) == []


def test_every_target_returns_series_in_some_time_range(results: list[check.Result]) -> None:
    """Each target of a tiered chart (raw, 1m, 1h) and every alert query reads data that exists."""
    answered: dict[tuple[str, str, str], int] = defaultdict(int)
    for r in results:
        answered[(r.dashboard, r.panel, r.ref_id)] += r.series
    assert [key for key, series in answered.items() if series == 0] == []


def test_exactly_one_tier_answers_per_time_range(results: list[check.Result], provisioning: Provisioning) -> None:
    """Raw for short ranges, the 1m rollup for a week, the 1h rollup for months: never two at once."""
    tiered = {
        (d.title, panel["title"])
        for d in provisioning.dashboards
        for panel in all_panels(d.model)
        if sum("$__interval_ms <=" in t["query"] or "$__interval_ms >" in t["query"] for t in panel.get("targets", []))
        > 1
    }
    per_range: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for r in results:
        if r.series and (r.dashboard, r.panel) in tiered:
            per_range[(r.dashboard, r.panel, r.scenario)].append(r.ref_id)
    assert per_range, "no tiered chart answered"
    assert {key: refs for key, refs in per_range.items() if len(refs) != 1} == {}
    tiers = {
        scenario: sorted({refs[0] for (_, _, s), refs in per_range.items() if s == scenario})
        for scenario in (sc.name for sc in check.SCENARIOS)
    }
    assert tiers == {"last 6h": ["A"], "last 7d": ["B"], "last 90d": ["C"]}


def test_check_command_passes_with_data_and_names_the_panel_on_errors(
    settings: InfluxSettings, cli_env: dict[str, str]
) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "dashboards", "check", "--expect-data"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "queries ran against" in ok.stdout

    missing = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "dashboards", "check"],
        env={**cli_env, "SMARTCITY_INFLUX_DB": "no_such_db"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1
    assert "smartcity: error:" in missing.stderr and "failed" in missing.stderr
    assert "AQI now by district" in missing.stdout and "database not found" in missing.stdout
