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
from storage.query import QueryClient, parse_results
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


def test_amounts_are_charted_per_hour_as_the_mean_of_a_districts_sensor_totals(
    settings: InfluxSettings, provisioning: Provisioning
) -> None:
    """Rain by district, in every tier: each gauge's rain in a bucket, scaled to an hour, averaged over gauges."""
    dashboard = next(d for d in provisioning.dashboards if d.uid == "smartcity-andaman-flood-weather")
    panel = next(p for p in all_panels(dashboard.model) if p["title"] == "Rainfall per hour by district")
    assert panel["fieldConfig"]["defaults"]["unit"] == "suffix: mm/h"
    with QueryClient(settings) as client:
        variables, _ = check.Checker(client).variable_values(dashboard)

        def rows(statement: str) -> dict[tuple[str, object], float]:
            return {
                (item.tags["district"], row[0]): row[1]
                for item in parse_results(client.raw(statement))
                for row in item.values
            }

        for target, interval_s in zip(panel["targets"], (60, 600, 3600), strict=True):
            charted = rows(check.substitute(target["query"], variables, range_s=6 * 3600, interval_s=interval_s))
            per_gauge = (
                f'SELECT sum("rainfall") * 3600 / {interval_s} FROM "raw"."weather" '
                "WHERE \"super_cluster\" = 'andaman' AND time >= now() - 6h "
                f'GROUP BY time({interval_s}s), "sensor_id", "district" fill(none)'
            )
            gauges: dict[tuple[str, object], list[float]] = defaultdict(list)
            for item in parse_results(client.raw(per_gauge)):
                for when, value in item.values:
                    gauges[(item.tags["district"], when)].append(value)
            assert len({district for district, _ in gauges}) > 1
            assert max(len(values) for values in gauges.values()) > 1, "districts with several gauges"
            assert charted.keys() == gauges.keys(), target["refId"]
            for key, values in gauges.items():
                assert charted[key] == pytest.approx(sum(values) / len(values), rel=1e-9), (target["refId"], key)


def test_the_reject_ratio_alert_is_per_vendor_and_needs_enough_messages(
    settings: InfluxSettings, provisioning: Provisioning
) -> None:
    rule = next(r for g in provisioning.rule_groups for r in g.rules if r.uid == "ops-reject-ratio")
    with QueryClient(settings) as client:
        series = parse_results(client.raw(rule.query.query))
    ratios = {item.tags["vendor"]: item.values[-1][1] for item in series}
    # BinWise rejects everything it sends, but sent too few messages in the window to count.
    assert ratios == {"siam-airsense": 0, "andaman-hydromet": pytest.approx(0.1), "_unknown": 1}
    assert rule.threshold == 0.05 and rule.evaluator == "gt"
