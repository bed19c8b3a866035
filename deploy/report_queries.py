"""The report's data: the InfluxDB queries of a super-cluster's page and the sections of charts they fill.

`ClusterReport` asks the rollups of `storage.schema` (`aqi_1h`, `{kind}_1h` / `{kind}_1m`,
`sensor_health_1h`; a gauge's minutes from raw where no sensor-level 1 m rollup is stored) the
questions of one page, and answers with a `ClusterPage`: sections of `Chart`s plus the AQI now per
district and the health totals per kind, which `deploy.report` renders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from deploy.report_figures import Chart, Trace, aqi_bands, per_hour, pollutant_bands, unit_label, with_gaps
from sensors.aqi import Band, band_for
from sensors.registry import Kind, Metric, Registry, SuperCluster
from storage.query import QueryClient, Series, ident
from storage.schema import AQI_MEASUREMENT, HEALTH_MEASUREMENT, rollup_field, rollup_levels, rollup_measurement
from storage.settings import InfluxSettings

# Up to this span the charts use the 1-minute rollups (at most 360 points a line), beyond it the hourly ones.
MINUTE_TIER_MAX_SPAN = timedelta(hours=6)
WINDOW_SECONDS = {"1m": 60, "1h": 3600}
WINDOW_LABELS = {"1m": "1-minute", "1h": "Hourly"}
# District rollup fields by metric `aggregate`: a level's mean; an amount's sum and count (see per_hour_chart).
DISTRICT_STATS = {"mean": ("mean",), "sum": ("sum", "count")}


@dataclass(frozen=True)
class TimeRange:
    """[start, end) in UTC; `window` is the rollup tier the kind charts read."""

    start: datetime
    end: datetime

    @property
    def window(self) -> str:
        return "1m" if self.end - self.start <= MINUTE_TIER_MAX_SPAN else "1h"


@dataclass
class AqiNow:
    """The latest hourly AQI of a district in the range (None: no AQI in range)."""

    district: str
    aqi: int | None = None
    band: Band | None = None
    dominant: str = ""
    time: datetime | None = None


class KindHealth(NamedTuple):
    """A kind's sensor health over the range: `totals` of received, expected, silent, outliers and
    flatline over its sensors, and their mean hourly completeness."""

    name: str
    totals: Mapping[str, float]
    completeness: float


@dataclass
class Section:
    id: str
    title: str
    charts: list[Chart] = field(default_factory=list)
    # Shown before the charts: the AQI now by district (cards and the band legend), the health table by kind.
    aqi_now: list[AqiNow] | None = None
    health: list[KindHealth] | None = None


@dataclass
class ClusterPage:
    cluster: SuperCluster
    sections: list[Section]
    aqi_now: list[AqiNow]
    completeness: float | None
    sensors: int
    points: int


def district_name(registry: Registry, district_id: str) -> str:
    district = registry.districts.get(district_id)
    return f"{district.name.en} · {district.name.th}" if district else district_id


# One template per shape of question; every value is a bound parameter (storage.query.render).
AREA_ROWS = (
    'SELECT {fields} FROM {m} WHERE "level" = {level} AND "super_cluster" = {cluster} '
    "AND time >= {start} AND time < {end} GROUP BY {tag}"
)
# A sensor's 1-minute maximum straight from raw: the row its 1m rollup would hold, where none is stored.
RAW_SENSOR_MAX = (
    'SELECT max({metric}) AS {column} FROM {m} WHERE "super_cluster" = {cluster} '
    'AND time >= {start} AND time < {end} GROUP BY time(1m), "sensor_id" fill(none)'
)
HEALTH_BY_VENDOR = (
    'SELECT mean("completeness") AS "completeness" FROM {m} WHERE "super_cluster" = {cluster} '
    'AND time >= {start} AND time < {end} GROUP BY time(1h), "vendor" fill(none)'
)
HEALTH_BY_SENSOR = (
    'SELECT mean("completeness") AS "completeness", sum("received") AS "received", sum("expected") AS "expected", '
    'sum("outliers") AS "outliers", sum("flatline") AS "flatline" FROM {m} WHERE "super_cluster" = {cluster} '
    'AND time >= {start} AND time < {end} GROUP BY "sensor_id"'
)
LATEST = "SELECT * FROM {m} ORDER BY time DESC LIMIT 1"


def latest_data_end(client: QueryClient, settings: InfluxSettings, registry: Registry) -> datetime | None:
    """The end of the latest hour with AQI, rollup or health data (None: the database has none)."""
    names = [AQI_MEASUREMENT, HEALTH_MEASUREMENT, *(rollup_measurement(kind, "1h") for kind in registry.kinds)]
    series = client.query(LATEST, {"m": [ident(settings.rollup_rp, name) for name in names]})
    times = [row[0] for item in series for row in item.values]
    return max(times) + timedelta(hours=1) if times else None


class ClusterReport:
    """Runs the queries of one super-cluster's page and turns the answers into sections."""

    def __init__(
        self,
        client: QueryClient,
        settings: InfluxSettings,
        registry: Registry,
        cluster: SuperCluster,
        time_range: TimeRange,
        on_step: Callable[[str], None],
    ) -> None:
        self.client = client
        self.settings = settings
        self.registry = registry
        self.cluster = cluster
        self.range = time_range
        self.on_step = on_step
        self.points = 0
        self.districts = [d for city in cluster.cities for d in city.districts]
        self.sensors = [s for s in registry.sensors.values() if s.super_cluster == cluster.id]
        present = {s.kind for s in self.sensors}
        self.kinds = [kind for kind in registry.kinds.values() if kind.id in present]

    def query(self, template: str, measurement: str, **params: object) -> list[Series]:
        self.on_step(f"{self.cluster.id}: {measurement}")
        series = self.client.query(
            template,
            {
                "m": ident(self.settings.rollup_rp, measurement),
                "cluster": self.cluster.id,
                "start": self.range.start,
                "end": self.range.end,
                **params,
            },
        )
        self.points += sum(len(item.values) for item in series)
        return series

    def area_rows(
        self, measurement: str, fields: Sequence[str], level: str, tag: str
    ) -> dict[str, list[dict[str, Any]]]:
        """Rows of one level of a rollup, by the value of `tag` (district or area)."""
        series = self.query(AREA_ROWS, measurement, fields=[ident(f) for f in fields], level=level, tag=ident(tag))
        return {item.tags.get(tag, ""): item.records() for item in series}

    def raw_sensor_max(self, kind: Kind, columns: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Per sensor, each minute's maximum of the threshold metrics from raw, as `{metric}_max` columns."""
        rows: dict[str, dict[Any, dict[str, Any]]] = {}
        for metric, column in zip(kind.site_thresholds, columns, strict=True):
            raw = ident(self.settings.raw_rp, kind.id)
            for item in self.query(RAW_SENSOR_MAX, kind.id, m=raw, metric=ident(metric), column=ident(column)):
                by_time = rows.setdefault(item.tags.get("sensor_id", ""), {})
                for record in item.records():
                    by_time.setdefault(record["time"], {"time": record["time"]})[column] = record[column]
        return {sensor: list(by_time.values()) for sensor, by_time in rows.items()}

    def district_traces(self, rows: Mapping[str, list[dict[str, Any]]], column: str, step_s: int) -> list[Trace]:
        """One trace per district, registry order first, districts the registry does not know after."""
        order = [d.id for d in self.districts] + sorted(set(rows) - {d.id for d in self.districts})
        traces = []
        for district_id in order:
            points = [(r["time"], float(r[column])) for r in rows.get(district_id, []) if r.get(column) is not None]
            if points:
                traces.append(Trace(district_name(self.registry, district_id), *with_gaps(points, step_s)))
        return traces

    # -- sections -----------------------------------------------------------------------

    def build(self) -> ClusterPage:
        sections: list[Section] = []
        aqi_now: list[AqiNow] = []
        if any(pollutant_bands(metric) for kind in self.kinds for metric in kind.metrics):
            section, aqi_now = self.aqi_section()
            sections.append(section)
        sections.extend(self.kind_section(kind) for kind in self.kinds)
        health, completeness = self.health_section()
        sections.append(health)
        return ClusterPage(self.cluster, sections, aqi_now, completeness, len(self.sensors), self.points)

    def aqi_section(self) -> tuple[Section, list[AqiNow]]:
        rows = self.area_rows(AQI_MEASUREMENT, ["aqi", "band", "dominant"], "district", "district")
        now: list[AqiNow] = []
        for district in self.districts:
            latest = max(rows.get(district.id, []), key=lambda r: r["time"], default=None)
            if latest is None or latest.get("aqi") is None:
                now.append(AqiNow(district.id))
                continue
            aqi = int(latest["aqi"])
            now.append(AqiNow(district.id, aqi, band_for(aqi), str(latest.get("dominant") or ""), latest["time"]))
        chart = Chart(
            f"{self.cluster.id}-aqi",
            "Thai AQI by district · ดัชนีคุณภาพอากาศรายอำเภอ",
            "Hourly AQI (highest sub-index of PM2.5, PM10, O3, CO, NO2, SO2; PCD averaging periods) "
            "on the PCD band colours.",
            "AQI",
            self.district_traces(rows, "aqi", 3600),
            bands=aqi_bands(),
        )
        section = Section("aqi", "Air quality, latest hour · คุณภาพอากาศชั่วโมงล่าสุด", [chart], aqi_now=now)
        return section, now

    def kind_section(self, kind: Kind) -> Section:
        window = self.range.window
        step_s = WINDOW_SECONDS[window]
        measurement = rollup_measurement(kind.id, window)
        by_district = [m for m in kind.metrics if m.name not in kind.site_thresholds]
        charts: list[Chart] = []
        if by_district:
            fields = [rollup_field(m.name, stat) for m in by_district for stat in DISTRICT_STATS[m.aggregate]]
            rows = self.area_rows(measurement, fields, "district", "district")
            for metric in by_district:
                if metric.aggregate == "sum":
                    charts.append(self.per_hour_chart(kind, metric, rows, window))
                    continue
                column = rollup_field(metric.name, "mean")
                bands = pollutant_bands(metric)
                note = f"{WINDOW_LABELS[window]} mean of each district's sensors, {unit_label(metric.unit) or 'count'}."
                if bands:
                    note += " Background: the PCD AQI bands of this pollutant (they apply to its averaging period)."
                charts.append(
                    Chart(
                        f"{self.cluster.id}-{kind.id}-{metric.name}",
                        f"{metric.description} ({metric.name})",
                        note,
                        metric.unit,
                        self.district_traces(rows, column, step_s),
                        bands=bands,
                    )
                )
        if kind.site_thresholds:
            fields = [rollup_field(name, "max") for name in kind.site_thresholds]
            if "sensor" in rollup_levels(window, kind.interval_s):
                rows = self.area_rows(measurement, fields, "sensor", "area")
            else:
                rows = self.raw_sensor_max(kind, fields)
            for name, column in zip(kind.site_thresholds, fields, strict=True):
                charts.extend(self.site_charts(kind, name, column, rows, window))
        return Section(kind.id, f"{kind.name.en} · {kind.name.th}", charts)

    def per_hour_chart(
        self, kind: Kind, metric: Metric, rows: Mapping[str, list[dict[str, Any]]], window: str
    ) -> Chart:
        """An amount since the previous reading (`aggregate: sum`) per hour: the district's mean reading times
        the readings an hour holds, i.e. the mean of its sensors' hourly totals (as the dashboards chart it)."""
        total, count = rollup_field(metric.name, "sum"), rollup_field(metric.name, "count")
        per_hour_rows = {
            district: [
                {"time": r["time"], "per_hour": r[total] / r[count] * 3600 / kind.interval_s}
                for r in records
                if r.get(total) is not None and r.get(count)
            ]
            for district, records in rows.items()
        }
        unit = per_hour(metric.unit)
        return Chart(
            f"{self.cluster.id}-{kind.id}-{metric.name}",
            f"{metric.description} ({metric.name}), per hour",
            f"Per hour ({unit}), from the {WINDOW_LABELS[window].lower()} rollups: each district's mean reading "
            f"times the {3600 / kind.interval_s:g} readings an hour holds (its sensors' hourly total, averaged).",
            unit,
            self.district_traces(per_hour_rows, "per_hour", WINDOW_SECONDS[window]),
        )

    def site_charts(
        self, kind: Kind, metric_name: str, column: str, rows: Mapping[str, list[dict[str, Any]]], window: str
    ) -> list[Chart]:
        """A chart per site with sensors of `kind`: each sensor's maximum against the site's thresholds."""
        metric = kind.metric(metric_name)
        assert metric is not None  # the registry checks site_thresholds against the metrics
        unit = unit_label(metric.unit)
        by_site: dict[str, list[str]] = {}
        for sensor in self.sensors:
            if sensor.kind == kind.id:
                by_site.setdefault(sensor.site, []).append(sensor.id)
        charts = []
        for site_id in (s for s in self.registry.sites if s in by_site):
            site = self.registry.sites[site_id]
            threshold = self.registry.threshold(site_id, metric_name)
            traces = []
            for sensor_id in by_site[site_id]:
                points = [(r["time"], float(r[column])) for r in rows.get(sensor_id, []) if r.get(column) is not None]
                if points:
                    traces.append(Trace(sensor_id, *with_gaps(points, WINDOW_SECONDS[window])))
            levels = []
            if threshold is not None:
                levels = [
                    (threshold.warning, f"warning · เฝ้าระวัง {threshold.warning:g} {unit}", "#E08A00"),
                    (threshold.danger, f"danger · อันตราย {threshold.danger:g} {unit}", "#CD0000"),
                ]
            district = district_name(self.registry, self.registry.district_of_site[site_id])
            charts.append(
                Chart(
                    f"{self.cluster.id}-{kind.id}-{metric_name}-{site_id}",
                    f"{site.name}: {metric.description}",
                    f"{district}. {WINDOW_LABELS[window]} maximum of each gauge, {unit}; "
                    "dashed: the site's warning and danger levels (registry).",
                    metric.unit,
                    traces,
                    levels=levels,
                )
            )
        return charts

    def health_section(self) -> tuple[Section, float | None]:
        by_vendor = self.query(HEALTH_BY_VENDOR, HEALTH_MEASUREMENT)
        vendor_traces = []
        for item in sorted(by_vendor, key=lambda s: s.tags.get("vendor", "")):
            vendor_id = item.tags.get("vendor", "")
            vendor = self.registry.vendors.get(vendor_id)
            points = [
                (r["time"], 100 * float(r["completeness"])) for r in item.records() if r["completeness"] is not None
            ]
            vendor_traces.append(Trace(vendor.name if vendor else vendor_id, *with_gaps(points, 3600)))
        vendor_chart = Chart(
            f"{self.cluster.id}-health-vendor",
            "Completeness by vendor · ความครบถ้วนของข้อมูลตามผู้จำหน่าย",
            "Hourly mean over each vendor's sensors of readings received / expected (from the kind's interval).",
            "%",
            vendor_traces,
            y_range=(0, 105),
        )
        # Per kind: sums over its sensors, and each sensor's mean hourly completeness (capped at 1 per hour,
        # so a sensor reporting too often cannot hide a silent one).
        totals: dict[str, dict[str, float]] = {}
        ratios_of: dict[str, list[float]] = {}
        for item in self.query(HEALTH_BY_SENSOR, HEALTH_MEASUREMENT):
            sensor = self.registry.sensors.get(item.tags.get("sensor_id", ""))
            kind_id = sensor.kind if sensor else "unknown"
            for record in item.records():
                kind_totals = totals.setdefault(
                    kind_id, {"received": 0, "expected": 0, "outliers": 0, "flatline": 0, "silent": 0}
                )
                for key in ("received", "expected", "outliers", "flatline"):
                    kind_totals[key] += float(record.get(key) or 0)
                kind_totals["silent"] += not record.get("received")
                ratios_of.setdefault(kind_id, []).append(float(record.get("completeness") or 0))
        kinds = [k for k in self.registry.kinds if k in totals] + sorted(set(totals) - set(self.registry.kinds))
        names = [self.kind_name(k) for k in kinds]
        ratios = [sum(ratios_of[k]) / len(ratios_of[k]) for k in kinds]
        kind_chart = Chart(
            f"{self.cluster.id}-health-kind",
            "Completeness by kind · ความครบถ้วนของข้อมูลตามประเภทเซนเซอร์",
            "Mean over the kind's sensors of their hourly readings received / expected, over the range.",
            "%",
            [Trace("completeness", names, [100 * r for r in ratios])] if kinds else [],
            bar=True,
            y_range=(0, 105),
        )
        every_sensor = [r for k in kinds for r in ratios_of[k]]
        overall = sum(every_sensor) / len(every_sensor) if every_sensor else None
        health = [KindHealth(name, totals[k], ratio) for k, name, ratio in zip(kinds, names, ratios, strict=True)]
        section = Section("health", "Sensor health · สถานะเซนเซอร์", [vendor_chart, kind_chart], health=health)
        return section, overall

    def kind_name(self, kind_id: str) -> str:
        kind = self.registry.kinds.get(kind_id)
        return f"{kind.name.en} · {kind.name.th}" if kind else kind_id
