"""Run every generated query against InfluxDB, the way Grafana would send it.

Grafana's macros are substituted first: `$timeFilter` with a time range ending now, `$__interval`
and `$__interval_ms` with the bucket Grafana would pick (never below the panel's minimum interval),
and each template variable with all the values its own `SHOW TAG VALUES` query returns (written
as `(a|b|c)`, as Grafana writes an "All" selection into a regex). Each panel is run at three
ranges, chosen so each resolution tier of a chart (raw, 1m, 1h rollup) answers in one of them (a
chart per sensor of a kind with no sensor-level 1m rollup reads raw for the week, see `influxql.tier_bounds`).
Variable queries and alert rule queries run too.

A query that InfluxDB refuses is a failure, named by dashboard, panel and query; with
`expect_data`, so is a panel (or alert query) that returns no series at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dashboards.alerts import RuleGroup
from dashboards.frame import GeneratedDashboard, all_panels
from storage.errors import QueryError
from storage.query import QueryClient, parse_results

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scenario:
    """A dashboard time range and the bucket width Grafana would choose for a panel over it."""

    name: str
    range_s: int
    interval_s: int

    def interval_for(self, floor_s: int) -> int:
        """The bucket for a panel whose minimum interval is `floor_s`. The week view stays between
        twice the floor and 30 min, so it reads the 1m rollup even for kinds that report every 10 min."""
        if self.name == "last 7d":
            return max(floor_s, min(max(self.interval_s, 2 * floor_s), 1800))
        return max(floor_s, self.interval_s)


# Grafana picks about range / 1000 pixels; these land in the raw, 1m (raw where no 1m is stored) and 1h tiers.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("last 6h", 6 * 3600, 20),
    Scenario("last 7d", 7 * 86400, 600),
    Scenario("last 90d", 90 * 86400, 2 * 3600),
)


@dataclass(frozen=True)
class Result:
    dashboard: str
    panel: str
    ref_id: str
    scenario: str
    query: str
    series: int
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id} ({self.scenario})"


def _interval_s(text: str | None) -> int:
    """Seconds of a Grafana interval like `60s`, `1h` (0 if unset)."""
    if not text:
        return 0
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip(">"))
    if not match:
        return 0
    return int(match[1]) * {"ms": 0, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def substitute(query: str, variables: dict[str, str], *, range_s: int, interval_s: int) -> str:
    """The query as Grafana would send it for a range ending now and a bucket of `interval_s`."""
    macros = {
        "$__timeFilter": f"time >= now() - {range_s}s and time <= now()",
        "$timeFilter": f"time >= now() - {range_s}s and time <= now()",
        "$__interval_ms": str(interval_s * 1000),
        "$__interval": f"{interval_s}s",
        "$interval": f"{interval_s}s",
    }
    macros.update({f"${name}": value for name, value in variables.items()})
    # Longest names first, so `$__interval_ms` is not read as `$__interval` followed by `_ms`.
    for name in sorted(macros, key=len, reverse=True):
        query = query.replace(name, macros[name])
    return query


class Checker:
    """Runs the queries of generated dashboards and alert rules through one `QueryClient`."""

    def __init__(self, client: QueryClient, on_query: Callable[[], None] = lambda: None) -> None:
        self.client = client
        self.on_query = on_query

    def run(self, statement: str) -> tuple[int, str | None]:
        self.on_query()
        try:
            return len(parse_results(self.client.raw(statement))), None
        except QueryError as err:
            return 0, str(err)

    def variable_values(self, dashboard: GeneratedDashboard) -> tuple[dict[str, str], list[Result]]:
        """Each variable's values from its own query, with the variables before it substituted."""
        values: dict[str, str] = {}
        results = []
        for variable in dashboard.model.get("templating", {}).get("list", []):
            statement = substitute(variable["query"], values, range_s=SCENARIOS[0].range_s, interval_s=60)
            self.on_query()
            try:
                series = parse_results(self.client.raw(statement))
                error = None
            except QueryError as err:
                series, error = [], str(err)
            found = sorted({str(row[-1]) for item in series for row in item.values})
            # Grafana writes an All selection into a regex as (a|b); no values match nothing.
            values[variable["name"]] = "(" + "|".join(re.escape(v) for v in found) + ")" if found else "(^$)"
            results.append(
                Result(dashboard.title, f"variable ${variable['name']}", "-", "-", statement, len(found), error)
            )
        return values, results

    def dashboard(self, dashboard: GeneratedDashboard) -> list[Result]:
        values, results = self.variable_values(dashboard)
        for panel in all_panels(dashboard.model):
            floor = _interval_s(panel.get("interval"))
            for target in panel.get("targets", []):
                for scenario in SCENARIOS:
                    interval = scenario.interval_for(floor)
                    statement = substitute(target["query"], values, range_s=scenario.range_s, interval_s=interval)
                    series, error = self.run(statement)
                    results.append(
                        Result(
                            dashboard.title, panel["title"], target["refId"], scenario.name, statement, series, error
                        )
                    )
        return results

    def rules(self, groups: Sequence[RuleGroup]) -> list[Result]:
        results = []
        for group in groups:
            for rule in group.rules:
                statement = rule.query.query
                series, error = self.run(statement)
                results.append(Result(f"alert group {group.name}", rule.title, "A", "now", statement, series, error))
        return results


def count_queries(dashboards: Sequence[GeneratedDashboard], groups: Sequence[RuleGroup]) -> int:
    total = sum(len(g.rules) for g in groups)
    for dashboard in dashboards:
        total += len(dashboard.model.get("templating", {}).get("list", []))
        total += sum(len(p.get("targets", [])) for p in all_panels(dashboard.model)) * len(SCENARIOS)
    return total


def failures(results: Sequence[Result], *, expect_data: bool) -> list[tuple[str, str]]:
    """(where, why) for every failed query and, with `expect_data`, every panel without series."""
    out = [(r.where, r.error) for r in results if r.error]
    if expect_data:
        answered: dict[tuple[str, str], int] = {}
        for r in results:
            if r.ref_id != "-":  # variables may legitimately be empty for one filter
                key = (r.dashboard, r.panel)
                answered[key] = answered.get(key, 0) + r.series
        out += [(f"{d} / {p}", "no series in any time range") for (d, p), n in answered.items() if n == 0]
    return out


def summary(results: Sequence[Result]) -> dict[str, Any]:
    return {
        "queries": len(results),
        "errors": sum(1 for r in results if r.error),
        "empty": sum(1 for r in results if not r.error and r.series == 0),
    }
