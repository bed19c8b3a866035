"""InfluxQL targets for Grafana panels and alert rules, and the resolution tiers the dashboards share.

grafana-foundation-sdk has builders for many datasources but none for InfluxDB, so `InfluxQLQuery`
is the small typed target it lacks: a raw-mode InfluxQL query of Grafana's InfluxDB datasource.

Resolution tiers. A time-series panel of a sensor kind carries three targets over the same data, and
exactly one of them answers for any dashboard time range:

    raw   "{raw_rp}"."{kind}"          $__interval_ms <= the kind's interval_s   (short ranges)
    1m    "{rollup_rp}"."{kind}_1m"    up to 1 h buckets                           (days)
    1h    "{rollup_rp}"."{kind}_1h"    1 h buckets and wider                       (weeks to years)

A tier whose rollup is not stored at the chart's level (`storage.schema.rollup_levels`: a sensor's
1 m window repeats its raw point when it reports every minute or less often) is left out, and raw
answers up to 1 h buckets in its place: the same points, so the same figures.

The choice rides on a constant comparison in the WHERE clause, e.g. `AND 60000 <= 59999`, which
InfluxDB folds to false and answers with no series, without an error (measured on InfluxDB 1.6.7).
Grafana substitutes `$__interval_ms` from the time range and the panel width, and the panel's minimum
interval is the kind's reporting interval, so the raw tier answers only while a bucket holds about
one reading per sensor: then raw is exact and fresher than any rollup. Wider buckets read the rollup
whose window is the largest that still fits in a bucket, so a year of data costs 8,760 points per
series instead of 525,600. Doing it in the query keeps one panel per chart, needs no variable the
operator has to set, and works the same on InfluxDB 1.x, 2.x (DBRP) and 3.x, which all speak InfluxQL.
The series of all tiers carry the same field alias and grouping tag, so the legend does not change
when the range does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as dm

from sensors.registry import Kind
from storage import schema

DATASOURCE_UID = "smartcity-influxdb"
DATASOURCE_TYPE = "influxdb"
HOUR_MS = 3_600_000

ResultFormat = Literal["time_series", "table"]
Tier = Literal["raw", "1m", "1h"]
# Scope of a series: which tag it is grouped by, in raw points and in rollups.
Scope = Literal["sensor", "district", "city"]


def datasource_ref() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


@dataclass
class InfluxQLQuery(cogvariants.Dataquery):
    """A raw InfluxQL target of Grafana's InfluxDB datasource (the JSON the query editor saves)."""

    ref_id: str
    query: str
    alias: str = ""
    result_format: ResultFormat = "time_series"
    # Which tier of a tiered chart this target is (None for untiered queries); `check` reads it.
    tier: Tier | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refId": self.ref_id,
            "datasource": {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID},
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


@dataclass
class Target(cogbuilder.Builder[InfluxQLQuery]):
    """Builder wrapper so an `InfluxQLQuery` goes where the SDK expects a dataquery builder."""

    query: InfluxQLQuery

    def build(self) -> InfluxQLQuery:
        return self.query


def quote(identifier: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + identifier.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def raw_from(kind: str) -> str:
    return f"{quote(schema.RAW_RP)}.{quote(kind)}"


def rollup_from(measurement: str) -> str:
    return f"{quote(schema.ROLLUP_RP)}.{quote(measurement)}"


def var_match(tag: str, variable: str) -> str:
    """`"tag" =~ /^$variable$/`: Grafana writes a multi-value or All selection as `(a|b)` there."""
    return f"{quote(tag)} =~ /^${variable}$/"


@dataclass(frozen=True)
class TierBounds:
    """The `$__interval_ms` range (lo exclusive, hi inclusive) in which one tier answers."""

    tier: Tier
    lo_ms: int | None
    hi_ms: int | None

    def condition(self) -> str:
        parts = []
        if self.lo_ms is not None:
            parts.append(f"$__interval_ms > {self.lo_ms}")
        if self.hi_ms is not None:
            parts.append(f"$__interval_ms <= {self.hi_ms}")
        return " AND ".join(parts)


def tier_bounds(interval_s: int, level: str = "district") -> list[TierBounds]:
    """The tiers of a kind reporting every `interval_s`, charted at `level`: raw up to that, 1m below 1 h,
    1h from 1 h; without a 1m tier (hourly kinds, or no 1m rollup stored at `level`) raw up to 1 h."""
    raw_hi = interval_s * 1000
    if raw_hi >= HOUR_MS - 1 or level not in schema.rollup_levels("1m", interval_s):
        raw_hi = max(raw_hi, HOUR_MS - 1)
        return [TierBounds("raw", None, raw_hi), TierBounds("1h", raw_hi, None)]
    return [TierBounds("raw", None, raw_hi), TierBounds("1m", raw_hi, HOUR_MS - 1), TierBounds("1h", HOUR_MS - 1, None)]


# Grouping tag and alias per scope. Sensor-level rollups name the sensor in `area`.
_GROUP_TAG: dict[Scope, tuple[str, str]] = {
    "sensor": ("sensor_id", "area"),
    "district": ("district", "district"),
    "city": ("city", "city"),
}


@dataclass(frozen=True)
class MetricChart:
    """One metric of a kind over time, grouped by a scope, in every tier.

    `stat` is the statistic charted; by default the metric's registry `aggregate` decides: the mean,
    or for an amount since the previous reading (`sum`: rain, vehicles) a total per hour. A sensor's
    is its sum over the bucket scaled to an hour. An area's is its mean reading times the readings an
    hour holds (3600 / interval_s): the mean of its sensors' hourly totals while they all report, a
    missed reading counting as the mean rather than 0 (a silent gauge is not a dry one); a sum over
    the sensors would grow with their number. (The exact mean of the sensors' totals needs a
    subquery, which InfluxDB 1.6 answered 14x slower over 90 days of 30 sensors: 1.2 s, measured.)

    `filters` are InfluxQL conditions on tags that raw points and rollups share (super_cluster, city,
    district); `sensor_filter` is a variable name that selects sensors (raw `sensor_id`, rollup
    `area`), for sensor-scope charts.
    """

    kind: Kind
    metric: str
    scope: Scope
    filters: Sequence[str] = ()
    stat: Literal["mean", "min", "max"] | None = None
    sensor_filter: str | None = None
    extra_raw_filters: Sequence[str] = field(default=())
    extra_rollup_filters: Sequence[str] = field(default=())

    @property
    def total(self) -> bool:
        """Whether the chart shows totals per hour (a `sum` metric with no explicit `stat`)."""
        spec = self.kind.metric(self.metric)
        assert spec is not None, f"kind {self.kind.id} has no metric {self.metric!r}"
        return self.stat is None and spec.aggregate == "sum"

    def select(self, tier: Tier) -> str:
        """The expression charted in one tier."""
        if not self.total:
            stat = self.stat or "mean"
            return f"{stat}({quote(self.metric if tier == 'raw' else schema.rollup_field(self.metric, stat))})"
        if self.scope == "sensor":
            column = self.metric if tier == "raw" else schema.rollup_field(self.metric, "sum")
            return f"sum({quote(column)}) * {HOUR_MS} / $__interval_ms"
        per_hour = f"* 3600 / {self.kind.interval_s}"
        if tier == "raw":
            return f"mean({quote(self.metric)}) {per_hour}"
        total, count = (quote(schema.rollup_field(self.metric, stat)) for stat in ("sum", "count"))
        return f"sum({total}) / sum({count}) {per_hour}"

    def targets(self) -> list[InfluxQLQuery]:
        raw_tag, rollup_tag = _GROUP_TAG[self.scope]
        out = []
        for ref, bounds in zip("ABC", tier_bounds(self.kind.interval_s, self.scope), strict=False):
            where = [*self.filters, "$timeFilter", bounds.condition()]
            if bounds.tier == "raw":
                source = raw_from(self.kind.id)
                tag = raw_tag
                if self.sensor_filter:
                    where.insert(0, var_match("sensor_id", self.sensor_filter))
                where[:0] = self.extra_raw_filters
            else:
                source = rollup_from(schema.rollup_measurement(self.kind.id, bounds.tier))
                tag = rollup_tag
                if self.sensor_filter:
                    where.insert(0, var_match("area", self.sensor_filter))
                where[:0] = [*self.extra_rollup_filters, f"{quote('level')} = {literal(self.scope)}"]
            query = (
                f"SELECT {self.select(bounds.tier)} AS {quote(self.metric)} FROM {source} WHERE {' AND '.join(where)} "
                f"GROUP BY time($__interval), {quote(tag)} fill(none)"
            )
            out.append(InfluxQLQuery(ref, query, alias=f"$tag_{tag}", tier=bounds.tier))
        return out
