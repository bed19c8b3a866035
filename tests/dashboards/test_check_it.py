"""Every generated panel, variable and alert query runs against the real InfluxDB and returns data."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import pytest

from dashboards import check
from dashboards.frame import all_panels
from dashboards.provisioning import Provisioning, generate
from sensors.registry import default_registry
from storage.query import QueryClient, parse_results
from storage.settings import InfluxSettings
from storage.writer import make_writer
from tests.dashboards.data import vendor_points, write_data_set
from tests.servers import StackHandle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(own_stack: StackHandle) -> StackHandle:
    """This module checks exact contents of the database: a stack no other module writes to."""
    return own_stack


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
    """Raw for short ranges, the 1m rollup for a week (raw for a sensor's chart: no sensor-level 1m is
    stored for kinds reporting every minute or less often), the 1h rollup for months: never two at once."""
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
            per_range[(r.dashboard, r.panel, r.scenario)].append(r.query)
    assert per_range, "no tiered chart answered"
    assert {key: q for key, q in per_range.items() if len(q) != 1} == {}

    def tier(query: str) -> str:
        source = query.split(" FROM ", 1)[1].split(" ", 1)[0]
        return source.rsplit("_", 1)[1].strip('"') if source.startswith('"rollup"') else "raw"

    tiers: dict[str, set[str]] = defaultdict(set)
    for (_, _, scenario), [query] in per_range.items():
        sensor_chart = '"level" = \'' not in query and "sensor_id" in query.split("GROUP BY", 1)[1]
        tiers[scenario].add(f"{tier(query)}{' (sensor)' if sensor_chart else ''}")
    assert dict(tiers) == {
        "last 6h": {"raw", "raw (sensor)"},
        "last 7d": {"1m", "raw (sensor)"},
        "last 90d": {"1h"},
    }


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


def test_amounts_are_charted_per_hour_in_every_tier(settings: InfluxSettings, provisioning: Provisioning) -> None:
    """Rain, in the raw, 1m and 1h tiers alike: each gauge's rain in a bucket scaled to an hour; per district,
    the mean of its gauges' totals (the data set has every reading, so the district's mean reading times 60)."""
    dashboard = next(d for d in provisioning.dashboards if d.uid == "smartcity-andaman-flood-weather")
    panels = {p["title"]: p for p in all_panels(dashboard.model)}
    by_district, by_sensor = panels["Rainfall per hour by district"], panels["Rainfall per hour by sensor"]
    assert by_district["fieldConfig"]["defaults"]["unit"] == "suffix: mm/h"
    with QueryClient(settings) as client:
        variables, _ = check.Checker(client).variable_values(dashboard)

        def charted(target: dict[str, Any], tag: str, interval_s: int) -> dict[tuple[str, object], float]:
            statement = check.substitute(target["query"], variables, range_s=6 * 3600, interval_s=interval_s)
            return {
                (item.tags[tag], row[0]): row[1] for item in parse_results(client.raw(statement)) for row in item.values
            }

        # The target that answers each bucket: by sensor raw, then 1h (no sensor-level 1m is stored for
        # gauges reporting every minute); by district raw, 1m, 1h.
        for interval_s, sensor_tier, district_tier in ((60, 0, 0), (600, 0, 1), (3600, 1, 2)):
            # Each gauge's rain and readings per bucket, from the raw points.
            gauges = parse_results(
                client.raw(
                    f'SELECT sum("rainfall"), count("rainfall") FROM "raw"."weather" WHERE "super_cluster" = '
                    f'\'andaman\' AND time >= now() - 6h GROUP BY time({interval_s}s), "sensor_id", "district" '
                    "fill(none)"
                )
            )
            per_hour = interval_s / 3600
            totals = {(g.tags["sensor_id"], when): total / per_hour for g in gauges for when, total, _ in g.values}
            by_tag = "area" if sensor_tier else "sensor_id"
            assert charted(by_sensor["targets"][sensor_tier], by_tag, interval_s) == pytest.approx(totals, rel=1e-9)
            districts: dict[tuple[str, object], list[tuple[float, int]]] = defaultdict(list)
            for g in gauges:
                for when, total, count in g.values:
                    districts[(g.tags["district"], when)].append((total / per_hour, count))
            full = {
                key: sum(total for total, _ in seen) / len(seen)
                for key, seen in districts.items()
                if all(count == interval_s // 60 for _, count in seen)  # buckets the data set covers whole
            }
            assert max(len(seen) for seen in districts.values()) > 1, "districts with several gauges"
            shown = charted(by_district["targets"][district_tier], "district", interval_s)
            assert len(full) > 1 and shown.keys() >= full.keys()
            assert {key: shown[key] for key in full} == pytest.approx(full, rel=1e-9), interval_s


def test_the_reject_ratio_alert_is_per_vendor_and_needs_enough_messages(
    settings: InfluxSettings, provisioning: Provisioning
) -> None:
    rule = next(r for g in provisioning.rule_groups for r in g.rules if r.uid == "ops-reject-ratio")
    # The rule looks at the last 15 minutes before now(): report the traffic again up to now, since the data
    # set was written when the module started (minutes ago on a busy machine).
    # On the data set's 10 s grid, so a report already written is overwritten, not doubled.
    now_ms = int(time.time() * 1000) // 10_000 * 10_000
    with make_writer(settings, rp=settings.raw_rp) as writer:
        writer.write(vendor_points(now_ms - 15 * 60_000, now_ms + 1))
    with QueryClient(settings) as client:
        series = parse_results(client.raw(rule.query.query))
    ratios = {item.tags["vendor"]: item.values[-1][1] for item in series}
    # BinWise rejects everything it sends, but sent too few messages in the window to count.
    assert ratios == {"siam-airsense": 0, "andaman-hydromet": pytest.approx(0.1), "_unknown": 1}
    assert rule.threshold == 0.05 and rule.evaluator == "gt"
