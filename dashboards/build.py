"""The dashboards, generated from the registry: five per super-cluster and one Operations dashboard.

Per super-cluster folder ("Lanna · ล้านนา — Chiang Mai"): Overview, one dashboard per group of
kinds (`GROUPS`: Air quality, Flood & weather, Mobility & city services), one per kind that no group
lists, and Sensor health. Every kind with sensors in the super-cluster gets a row with one chart per
metric, a chart per site for metrics with site thresholds (drawn as the site's warning and danger
lines), and a collapsed row of per-sensor charts. A kind whose metrics are AQI pollutants also gets
the AQI section (`aqi_1h`, PCD colours). Nothing here names a kind: a new kind in the registry gets
its panels, in its own dashboard unless `GROUPS` lists it, with no code change.

Size: about 1,000 lines, one class per dashboard family over a shared layout; the seam is one
module per dashboard (air quality, flood/weather, mobility, health, operations), not yet cut because
alerts.py links to panels built here and both would move together. Panels live in panels.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import panels as p
from dashboards.influxql import (
    InfluxQLQuery,
    MetricChart,
    datasource_ref,
    literal,
    quote,
    raw_from,
    rollup_from,
    var_match,
)
from sensors.aqi import POLLUTANTS
from sensors.contract import RejectCode
from sensors.registry import Kind, Metric, Registry, SuperCluster
from storage import schema

TAG = "smartcity"
OPERATIONS_FOLDER = "Smartcity operations · ปฏิบัติการ"
LOSS_PANEL = "Loss seen by ingest"
SEQ_GAPS_PANEL = "Sequence gaps by vendor"  # sensor health: readings the sensors numbered that never arrived


@dataclass(frozen=True)
class Group:
    """A dashboard that gathers several kinds (presentation data, not code per kind)."""

    slug: str
    title_en: str
    title_th: str
    kinds: tuple[str, ...]


GROUPS: tuple[Group, ...] = (
    Group("air-quality", "Air quality", "คุณภาพอากาศ", ("air_quality",)),
    Group("flood-weather", "Flood & weather", "น้ำท่วมและสภาพอากาศ", ("water_level", "weather")),
    Group(
        "mobility-services",
        "Mobility & city services",
        "การเดินทางและบริการเมือง",
        ("traffic", "parking", "noise", "waste_bin", "energy"),
    ),
)


@dataclass(frozen=True)
class GeneratedDashboard:
    """One dashboard: its folder title, file name, uid and Grafana JSON model."""

    folder: str
    folder_uid: str
    file_name: str
    uid: str
    model: dict[str, Any]

    @property
    def title(self) -> str:
        return str(self.model["title"])

    def panel_id(self, title: str) -> int:
        """Id of the panel with this title (alert rules link to it); KeyError if there is none."""
        for panel in all_panels(self.model):
            if panel.get("title") == title:
                return int(panel["id"])
        raise KeyError(f"{self.uid} has no panel titled {title!r}")


def all_panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels of a dashboard model, including those inside collapsed rows."""
    out = []
    for panel in model.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def folder_title(registry: Registry, cluster: SuperCluster) -> str:
    cities = ", ".join(city.name.en for city in cluster.cities)
    return f"{cluster.name.en} · {cluster.name.th} — {cities}"


def folder_uid(cluster_id: str) -> str:
    return f"{TAG}-{cluster_id}"


def dashboard_uid(cluster_id: str, slug: str) -> str:
    return f"{TAG}-{cluster_id}-{slug}"


def kind_slug(kind_id: str) -> str:
    return kind_id.replace("_", "-")


def to_model(dashboard: db.Dashboard, layout: p.Layout) -> dict[str, Any]:
    built = dashboard.build()
    built.panels = layout.panels
    # The SDK's encoder turns its models into plain JSON data.
    model: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
    return model


class ClusterDashboards:
    """Builds the dashboards of one super-cluster."""

    def __init__(self, registry: Registry, cluster: SuperCluster) -> None:
        self.registry = registry
        self.cluster = cluster
        self.folder = folder_title(registry, cluster)
        self.sensors = [s for s in registry.sensors.values() if s.super_cluster == cluster.id]
        # Kinds with sensors here, in registry order.
        present = {s.kind for s in self.sensors}
        self.kinds = [kind for kind in registry.kinds.values() if kind.id in present]
        self.names = {c.id: f"{c.name.en} / {c.name.th}" for c in cluster.cities}
        self.names.update({d.id: f"{d.name.en} / {d.name.th}" for c in cluster.cities for d in c.districts})
        self.scope = f"{quote('super_cluster')} = {literal(cluster.id)}"
        lats = [s.lat for s in self.sensors] or [13.7]
        lons = [s.lon for s in self.sensors] or [100.5]
        self.centre = ((min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2)

    # -- shared pieces -------------------------------------------------------------------

    def place_filters(self, district: bool = True) -> list[str]:
        filters = [self.scope, var_match("city", "city")]
        if district:
            filters.append(var_match("district", "district"))
        return filters

    def dashboard(self, slug: str, title_en: str, title_th: str, description: str) -> db.Dashboard:
        return (
            db.Dashboard(f"{title_en} / {title_th} — {self.cluster.name.en}")
            .uid(dashboard_uid(self.cluster.id, slug))
            .description(description)
            .tags([TAG, f"{TAG}-{self.cluster.id}", slug])
            .timezone("Asia/Bangkok")
            .time("now-24h", "now")
            .refresh("1m")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .readonly()
            .link(
                db.DashboardLink(f"{self.cluster.name.en} dashboards")
                .type(dm.DashboardLinkType.DASHBOARDS)
                .tags([f"{TAG}-{self.cluster.id}"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )

    def variables(self, dashboard: db.Dashboard, *extra: db.QueryVariable) -> None:
        scope = f"WHERE {self.scope}"
        dashboard.with_variable(tag_variable("city", "City / เมือง", f'SHOW TAG VALUES WITH KEY = "city" {scope}'))
        dashboard.with_variable(
            tag_variable(
                "district",
                "District / อำเภอ",
                f'SHOW TAG VALUES WITH KEY = "district" {scope} AND {var_match("city", "city")}',
            )
        )
        for variable in extra:
            dashboard.with_variable(variable)

    def sensor_variable(self, kinds: Sequence[Kind], source: str | None = None) -> db.QueryVariable:
        measurements = source or ", ".join(quote(kind.id) for kind in kinds)
        return tag_variable(
            "sensor",
            "Sensor / เซนเซอร์",
            f'SHOW TAG VALUES FROM {measurements} WITH KEY = "sensor_id" WHERE {" AND ".join(self.place_filters())}',
        )

    # -- sections --------------------------------------------------------------------------

    def aqi_queries(self, select: str, *, group_time: bool, result_format: str = "time_series") -> InfluxQLQuery:
        where = [f"{quote('level')} = 'district'", *self.place_filters(), "$timeFilter"]
        group = 'GROUP BY time($__interval), "district" fill(none)' if group_time else 'GROUP BY "district"'
        return InfluxQLQuery(
            "A",
            f"SELECT {select} FROM {rollup_from(schema.AQI_MEASUREMENT)} WHERE {' AND '.join(where)} {group}",
            alias="$tag_district",
            result_format=result_format,  # type: ignore[arg-type]
        )

    def aqi_section(self, layout: p.Layout) -> None:
        layout.row("Thai AQI (PCD) / ดัชนีคุณภาพอากาศ")
        now = p.stat_panel(
            "AQI now by district",
            [self.aqi_queries('last("aqi") AS "aqi"', group_time=False)],
            description="Latest hourly Thai AQI of each district, coloured by the PCD band.",
            thresholds=p.aqi_thresholds(),
        )
        layout.add(p.display_names(now, self.names), 24, 4)
        trend = p.timeseries_panel(
            AQI_DISTRICT_PANEL,
            [self.aqi_queries('max("aqi") AS "aqi"', group_time=True)],
            unit="short",
            description="Hourly Thai AQI (highest sub-index of PM2.5, PM10, O3, CO, NO2, SO2) with the PCD bands.",
            min_interval_s=3600,
            thresholds=p.aqi_thresholds(),
            threshold_style=cm.GraphThresholdsStyleMode.AREA,
        )
        layout.add(p.display_names(trend, self.names), 16, 9)
        comparison = p.bargauge_panel(
            "District comparison: mean AQI over the range",
            [self.aqi_queries('mean("aqi") AS "aqi"', group_time=False)],
            thresholds=p.aqi_thresholds(),
        )
        layout.add(p.display_names(comparison, self.names), 8, 9)
        dominant = p.table_panel(
            "Dominant pollutant by district",
            [
                self.aqi_queries(
                    'last("aqi") AS "AQI", last("band") AS "Band", last("dominant") AS "Dominant"',
                    group_time=False,
                    result_format="table",
                )
            ],
            sort_by="AQI",
            descending=True,
            overrides={"Band": [dm.DynamicConfigValue("mappings", band_mapping_json())]},
        )
        layout.add(dominant, 24, 6)

    def kind_section(self, layout: p.Layout, kind: Kind) -> None:
        layout.row(f"{kind.name.en} / {kind.name.th}")
        for metric in kind.metrics:
            chart = MetricChart(kind, metric.name, "district", filters=self.place_filters())
            how = (
                f"per hour: the district's mean reading times the {3600 / kind.interval_s:g} readings an hour "
                "holds (its sensors' hourly total, averaged)"
                if chart.total
                else "mean of the district's sensors"
            )
            panel = p.timeseries_panel(
                f"{metric_title(metric)} by district",
                chart.targets(),
                unit=p.chart_unit(metric),
                description=f"{kind.name.en} `{metric.name}` ({metric.unit}), {how}.",
                min_interval_s=kind.interval_s,
                thresholds=pollutant_thresholds(metric.name, metric.unit),
                threshold_style=cm.GraphThresholdsStyleMode.DASHED,
            )
            layout.add(p.display_names(panel, self.names), 12, 8)
        for metric_name in kind.site_thresholds:
            threshold_metric = kind.metric(metric_name)
            assert threshold_metric is not None  # the registry checks site_thresholds against the metrics
            for site_id, sensor_ids in self.sites_of(kind):
                threshold = self.registry.threshold(site_id, metric_name)
                if threshold is None:
                    continue
                site = self.registry.sites[site_id]
                chart = MetricChart(
                    kind,
                    metric_name,
                    "sensor",
                    filters=[self.scope],
                    stat="max",
                    extra_raw_filters=[f"{quote('site')} = {literal(site_id)}"],
                    extra_rollup_filters=[f"{quote('area')} =~ /^({'|'.join(sensor_ids)})$/"],
                )
                panel = p.timeseries_panel(
                    site_panel_title(kind, metric_name, site.name),
                    chart.targets(),
                    unit=p.grafana_unit(threshold_metric.unit),
                    description=(
                        f"{threshold_metric.description} at {site.name}: warning {threshold.warning} "
                        f"{threshold_metric.unit}, danger {threshold.danger} {threshold_metric.unit} "
                        "(site thresholds from the registry)."
                    ),
                    min_interval_s=kind.interval_s,
                    thresholds=p.site_thresholds(threshold),
                    threshold_style=cm.GraphThresholdsStyleMode.LINE_AND_AREA,
                )
                layout.add(panel, 8, 7)
        layout.row(f"{kind.name.en}: selected sensors / เซนเซอร์ที่เลือก", collapsed=True)
        for metric in kind.metrics:
            chart = MetricChart(kind, metric.name, "sensor", filters=self.place_filters(), sensor_filter="sensor")
            layout.add(
                p.timeseries_panel(
                    f"{metric_title(metric)} by sensor",
                    chart.targets(),
                    unit=p.chart_unit(metric),
                    min_interval_s=kind.interval_s,
                ),
                12,
                8,
            )

    def sites_of(self, kind: Kind) -> list[tuple[str, list[str]]]:
        """Sites of this super-cluster with sensors of `kind`, and those sensors, in registry order."""
        by_site: dict[str, list[str]] = {}
        for sensor in self.sensors:
            if sensor.kind == kind.id:
                by_site.setdefault(sensor.site, []).append(sensor.id)
        return [(site, by_site[site]) for site in self.registry.sites if site in by_site]

    # -- dashboards -----------------------------------------------------------------------

    def kinds_dashboard(self, slug: str, title_en: str, title_th: str, kinds: Sequence[Kind]) -> GeneratedDashboard:
        names = ", ".join(kind.name.en for kind in kinds)
        dashboard = self.dashboard(slug, title_en, title_th, f"{names} in {self.cluster.name.en}, from the registry.")
        self.variables(dashboard, self.sensor_variable(kinds))
        layout = p.Layout()
        for kind in kinds:
            if any(pollutant_thresholds(m.name, m.unit) for m in kind.metrics):
                self.aqi_section(layout)
            self.kind_section(layout, kind)
        return self.generated(slug, dashboard, layout)

    def overview(self) -> GeneratedDashboard:
        slug = "overview"
        dashboard = self.dashboard(
            slug, "Overview", "ภาพรวม", f"Air quality, sensors and key figures of {self.cluster.name.en} now."
        )
        self.variables(dashboard)
        layout = p.Layout()
        layout.row("Now / ขณะนี้")
        layout.add(
            p.display_names(
                p.stat_panel(
                    "AQI now by district",
                    [self.aqi_queries('last("aqi") AS "aqi"', group_time=False)],
                    description="Latest hourly Thai AQI of each district, coloured by the PCD band.",
                    thresholds=p.aqi_thresholds(),
                ),
                self.names,
            ),
            12,
            6,
        )
        health_where = " AND ".join([*self.place_filters(), "$timeFilter"])
        aqi_layer = self.aqi_queries('last("aqi") AS "aqi"', group_time=False, result_format="table")
        sensor_layer = InfluxQLQuery(
            "B",
            f'SELECT last("completeness") AS "completeness" FROM {rollup_from(schema.HEALTH_MEASUREMENT)} '
            f'WHERE {health_where} GROUP BY "sensor_id"',
            alias="completeness",
            result_format="table",
        )
        aqi_layer.alias = "aqi"
        layout.add(
            p.geomap_panel(
                "Sensors and district AQI",
                [
                    ("District AQI", "district", aqi_layer, p.aqi_thresholds()),
                    ("Sensor completeness (last hour)", "sensor_id", sensor_layer, p.ratio_thresholds(0.5, 0.9)),
                ],
                description=(
                    "Districts coloured by their latest Thai AQI band; sensors by the share of expected "
                    "readings that arrived in their latest hour (red < 50%, orange < 90%)."
                ),
                centre=self.centre,
                zoom=10,
            ),
            12,
            12,
        )
        layout.add(self.key_figures("district"), 12, 6)
        layout.add(self.key_figures("city"), 24, 4)
        return self.generated(slug, dashboard, layout)

    def key_figures(self, level: str) -> p.AnyPanel:
        """A table per district or city: AQI, dominant pollutant, completeness, readings, outliers."""
        tag = "district" if level == "district" else "city"
        aqi_where = [f"{quote('level')} = {literal(level)}", *self.place_filters(level == "district"), "$timeFilter"]
        health_where = [*self.place_filters(level == "district"), "$timeFilter"]
        queries = [
            InfluxQLQuery(
                "A",
                f'SELECT last("aqi") AS "AQI", last("dominant") AS "Dominant" FROM '
                f"{rollup_from(schema.AQI_MEASUREMENT)} WHERE {' AND '.join(aqi_where)} GROUP BY {quote(tag)}",
                result_format="table",
            ),
            InfluxQLQuery(
                "B",
                f'SELECT mean("completeness") AS "Completeness", sum("received") AS "Readings", '
                f'sum("outliers") AS "Outliers" FROM {rollup_from(schema.HEALTH_MEASUREMENT)} '
                f"WHERE {' AND '.join(health_where)} GROUP BY {quote(tag)}",
                result_format="table",
            ),
        ]
        return p.table_panel(
            f"Key figures by {tag}",
            queries,
            description="Over the dashboard's time range: latest AQI, mean completeness, readings and outliers.",
            sort_by="AQI",
            descending=True,
            overrides={
                "AQI": [
                    dm.DynamicConfigValue("custom.cellOptions", {"type": "color-background"}),
                    dm.DynamicConfigValue("thresholds", p.aqi_thresholds().build()),
                ],
                "Completeness": [
                    dm.DynamicConfigValue("unit", "percentunit"),
                    dm.DynamicConfigValue("custom.cellOptions", {"type": "color-text"}),
                    dm.DynamicConfigValue("thresholds", p.ratio_thresholds(0.5, 0.9).build()),
                ],
            },
        )

    def sensor_health(self) -> GeneratedDashboard:
        slug = "sensor-health"
        dashboard = self.dashboard(
            slug,
            "Sensor health",
            "สถานะเซนเซอร์",
            "Completeness, silent sensors, flatlines, outliers and sequence gaps by vendor, district and sensor.",
        )
        kinds_regex = "|".join(kind.id for kind in self.kinds)
        health = rollup_from(schema.HEALTH_MEASUREMENT)
        self.variables(
            dashboard,
            tag_variable(
                "vendor",
                "Vendor / ผู้จำหน่าย",
                f'SHOW TAG VALUES FROM {health} WITH KEY = "vendor" WHERE {" AND ".join(self.place_filters())}',
            ),
            tag_variable("kind", "Kind / ประเภท", f"SHOW MEASUREMENTS WITH MEASUREMENT =~ /^({kinds_regex})$/"),
            self.sensor_variable(self.kinds, source="/^$kind$/"),
        )
        where = " AND ".join(
            [*self.place_filters(), var_match("vendor", "vendor"), var_match("sensor_id", "sensor"), "$timeFilter"]
        )

        def health_chart(select: str, tag: str) -> InfluxQLQuery:
            return InfluxQLQuery(
                "A",
                f"SELECT {select} FROM {health} WHERE {where} GROUP BY time($__interval), {quote(tag)} fill(none)",
                alias=f"$tag_{tag}",
            )

        layout = p.Layout()
        layout.row("Completeness / ความครบถ้วน")
        layout.add(
            p.timeseries_panel(
                "Completeness by vendor",
                [health_chart('mean("completeness") AS "completeness"', "vendor")],
                unit="percentunit",
                description="Readings received / expected per hour (expected from each kind's interval_s).",
                min_interval_s=3600,
                thresholds=p.ratio_thresholds(0.5, 0.9),
                threshold_style=cm.GraphThresholdsStyleMode.DASHED,
            ),
            12,
            8,
        )
        layout.add(
            p.display_names(
                p.timeseries_panel(
                    "Completeness by district",
                    [health_chart('mean("completeness") AS "completeness"', "district")],
                    unit="percentunit",
                    min_interval_s=3600,
                    thresholds=p.ratio_thresholds(0.5, 0.9),
                    threshold_style=cm.GraphThresholdsStyleMode.DASHED,
                ),
                self.names,
            ),
            12,
            8,
        )
        layout.add(
            p.bargauge_panel(
                "Completeness by vendor over the range",
                [
                    InfluxQLQuery(
                        "A",
                        f'SELECT mean("completeness") AS "completeness" FROM {health} WHERE {where} GROUP BY "vendor"',
                        alias="$tag_vendor",
                    )
                ],
                unit="percentunit",
                thresholds=p.ratio_thresholds(0.5, 0.9),
            ),
            6,
            8,
        )
        layout.add(
            p.timeseries_panel(
                "Outliers by vendor",
                [health_chart('sum("outliers") AS "outliers"', "vendor")],
                unit="short",
                description="Readings flagged as outliers per hour.",
                min_interval_s=3600,
            ),
            6,
            8,
        )
        layout.add(
            p.timeseries_panel(
                "Flatlined sensors by vendor",
                [health_chart('sum("flatline") AS "flatline"', "vendor")],
                unit="short",
                description="Sensor-hours whose readings did not change at all.",
                min_interval_s=3600,
            ),
            6,
            8,
        )
        layout.add(
            p.timeseries_panel(
                SEQ_GAPS_PANEL,
                [health_chart('sum("seq_gaps") AS "seq_gaps"', "vendor")],
                unit="short",
                description=(
                    "Sequence numbers (`seq`) the sensors skipped per hour: readings lost before ingest (a gateway, "
                    "the broker) or rejected. Only sensors that send `seq`; a drop to 0 is a restart, not a gap."
                ),
                min_interval_s=3600,
            ),
            6,
            8,
        )
        layout.add(
            p.table_panel(
                "Least complete sensors",
                [
                    InfluxQLQuery(
                        "A",
                        'SELECT mean("completeness") AS "Completeness", sum("received") AS "Received", '
                        'sum("expected") AS "Expected", sum("outliers") AS "Outliers", sum("flatline") AS "Flatline", '
                        'sum("seq_gaps") AS "Seq gaps" '
                        f'FROM {health} WHERE {where} GROUP BY "sensor_id", "vendor", "district"',
                        result_format="table",
                    )
                ],
                description="Every sensor over the time range, least complete first.",
                sort_by="Completeness",
                overrides={
                    "Completeness": [
                        dm.DynamicConfigValue("unit", "percentunit"),
                        dm.DynamicConfigValue("custom.cellOptions", {"type": "color-background"}),
                        dm.DynamicConfigValue("thresholds", p.ratio_thresholds(0.5, 0.9).build()),
                    ]
                },
            ),
            24,
            10,
        )
        layout.row("Silent sensors now / เซนเซอร์ที่เงียบ")
        for kind in self.kinds:
            layout.add(
                p.table_panel(
                    silent_panel_title(kind),
                    [silence_query(kind, self.place_filters(), table=True)],
                    description=(
                        f"Readings per {kind.interval_s} s over the last {SILENT_INTERVALS + 1} intervals of each "
                        f"{kind.name.en} sensor that reported in the last {SILENT_LOOKBACK}; 0 means silent for "
                        f"more than {SILENT_INTERVALS} intervals (the alert rule's query)."
                    ),
                    sort_by="readings",
                    overrides={
                        "readings": [
                            dm.DynamicConfigValue("custom.cellOptions", {"type": "color-background"}),
                            dm.DynamicConfigValue("thresholds", p.ratio_thresholds(0.01, 0.5).build()),
                        ]
                    },
                ),
                8,
                8,
            )
        filters = [*self.place_filters(), var_match("vendor", "vendor"), var_match("kind", "kind")]
        self.anomalies_section(layout, filters)
        return self.generated(slug, dashboard, layout)

    def anomalies_section(self, layout: p.Layout, filters: Sequence[str]) -> None:
        """What the anomalies pipeline flagged: counts by kind and type over time, and the latest rows."""
        anomalies = rollup_from(schema.ANOMALY_MEASUREMENT)
        where = " AND ".join([*filters, var_match("sensor_id", "sensor"), "$timeFilter"])
        layout.row("Anomalies / ความผิดปกติ")
        layout.add(
            p.timeseries_panel(
                ANOMALIES_PANEL,
                [
                    InfluxQLQuery(
                        "A",
                        f'SELECT count("value") AS "anomalies" FROM {anomalies} WHERE {where} '
                        'GROUP BY time($__interval), "kind", "type" fill(none)',
                        alias="$tag_kind $tag_type",
                    )
                ],
                unit="short",
                description=(
                    "Readings flagged per interval: `spike` (robust z-score above 3.5 within the sensor's hour) "
                    "and `rapid_rise` (moving towards a site's danger level faster than warning-to-danger in an "
                    "hour). The pipelines judge whole hours, so the latest hour appears once it is over."
                ),
                min_interval_s=3600,
            ),
            10,
            9,
        )
        columns = ", ".join(
            f"{quote(name)} AS {quote(label)}"
            for name, label in (
                ("type", "Type"),
                ("sensor_id", "Sensor"),
                ("vendor", "Vendor"),
                ("kind", "Kind"),
                ("metric", "Metric"),
                ("value", "Value"),
                ("score", "Score"),
                ("threshold", "Threshold"),
            )
        )
        layout.add(
            p.table_panel(
                "Latest anomalies",
                [
                    InfluxQLQuery(
                        "A",
                        f"SELECT {columns} FROM {anomalies} WHERE {where} ORDER BY time DESC LIMIT {ANOMALY_ROWS}",
                        result_format="table",
                    )
                ],
                description=(
                    f"The {ANOMALY_ROWS} most recent anomalies: the reading's value, its score (z-score, or rate "
                    "per hour for rapid_rise) and the threshold it passed."
                ),
                keep_time=True,
            ),
            14,
            9,
        )

    def generated(self, slug: str, dashboard: db.Dashboard, layout: p.Layout) -> GeneratedDashboard:
        uid = dashboard_uid(self.cluster.id, slug)
        return GeneratedDashboard(
            self.folder, folder_uid(self.cluster.id), f"{slug}.json", uid, to_model(dashboard, layout)
        )

    def all(self) -> list[GeneratedDashboard]:
        out = [self.overview()]
        grouped: set[str] = set()
        for group in GROUPS:
            kinds = [kind for kind in self.kinds if kind.id in group.kinds]
            grouped.update(group.kinds)
            if kinds:
                out.append(self.kinds_dashboard(group.slug, group.title_en, group.title_th, kinds))
        for kind in self.kinds:
            if kind.id not in grouped:
                out.append(self.kinds_dashboard(kind_slug(kind.id), kind.name.en, kind.name.th, [kind]))
        out.append(self.sensor_health())
        return out


# Silence: a sensor is silent when none of its readings arrived in the last SILENT_INTERVALS of its
# kind's interval_s. Buckets of one interval are counted with fill(0), so a silent sensor shows 0
# rather than disappearing; the mean of the last SILENT_INTERVALS + 1 buckets covers at least
# SILENT_INTERVALS full intervals although the newest bucket is still filling.
SILENT_INTERVALS = 3
# The reject-ratio alert: per vendor, over a window, only with enough messages that a few bad ones do not page.
REJECT_RATIO_LIMIT = 0.05
REJECT_RATIO_WINDOW_S = 900
REJECT_RATIO_MIN_MESSAGES = 100
REJECT_RATIO_PANEL = "Reject ratio by vendor"
AQI_DISTRICT_PANEL = "AQI by district"  # alert rules link to it (dashboards/alerts.py)
ANOMALIES_PANEL = "Anomalies by kind and type"
ANOMALY_ROWS = 100
SILENT_LOOKBACK = "6h"


def silence_query(kind: Kind, filters: Sequence[str], *, table: bool = False, ref_id: str = "A") -> InfluxQLQuery:
    metric = next((m for m in kind.metrics if m.required), kind.metrics[0])
    inner = (
        f'SELECT moving_average(count({quote(metric.name)}), {SILENT_INTERVALS + 1}) AS "readings" '
        f"FROM {raw_from(kind.id)} WHERE {' AND '.join([*filters, f'time > now() - {SILENT_LOOKBACK}'])} "
        f'GROUP BY time({kind.interval_s}s), "sensor_id", "vendor" fill(0)'
    )
    return InfluxQLQuery(
        ref_id,
        f'SELECT last("readings") AS "readings" FROM ({inner}) GROUP BY "sensor_id", "vendor"',
        alias="$tag_sensor_id",
        result_format="table" if table else "time_series",
    )


def metric_title(metric: Metric) -> str:
    """A chart's title: the metric's description, or for a `sum` metric what is charted ("Rainfall per hour")."""
    if metric.aggregate == "sum":
        return f"{metric.name.replace('_', ' ').capitalize()} per hour"
    return metric.description


def silent_panel_title(kind: Kind) -> str:
    return f"{kind.name.en}: readings per interval, latest"


def site_panel_title(kind: Kind, metric: str, site_name: str) -> str:
    suffix = f" ({metric})" if len(kind.site_thresholds) > 1 else ""
    return f"{kind.name.en} at {site_name}{suffix}"


def tag_variable(name: str, label: str, query: str) -> db.QueryVariable:
    """A multi-value variable with All, refreshed when the time range changes, sorted by value."""
    return (
        db.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(datasource_ref())
        .multi(True)
        .include_all(True)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def pollutant_thresholds(metric: str, unit: str) -> Any:
    """Band colours at the PCD breakpoints, for a metric that is an AQI pollutant in the same unit."""
    for pollutant in POLLUTANTS:
        if pollutant.name == metric and pollutant.unit == unit:
            lower = [lo for lo, _ in pollutant.breakpoints[1:]] + [pollutant.top]
            return p.band_step_thresholds(lower)
    return None


def band_mapping_json() -> list[dict[str, Any]]:
    return [mapping.to_json() for mapping in p.band_mappings()]


def operations_dashboard() -> GeneratedDashboard:
    """Ingest rates, rejects by code, spool lag, write latency and the pipelines' output, all clusters."""
    uid = f"{TAG}-operations"
    dashboard = (
        db.Dashboard("Operations / ปฏิบัติการ")
        .uid(uid)
        .description("The platform itself: ingest, spool, InfluxDB writes and pipeline output.")
        .tags([TAG, "operations"])
        .timezone("Asia/Bangkok")
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .readonly()
        .with_variable(
            tag_variable(
                "instance",
                "Ingest instance",
                f'SHOW TAG VALUES FROM {quote(schema.INGEST_MEASUREMENT)} WITH KEY = "instance"',
            )
        )
        .with_variable(
            tag_variable(
                "vendor",
                "Vendor / ผู้จำหน่าย",
                f'SHOW TAG VALUES FROM {quote(schema.INGEST_VENDORS_MEASUREMENT)} WITH KEY = "vendor"',
            )
        )
    )
    ingest = raw_from(schema.INGEST_MEASUREMENT)
    where = f"{var_match('instance', 'instance')} AND $timeFilter"

    def per_second(fields: Sequence[str], group: str = "", strip: str = "") -> InfluxQLQuery:
        # Counters are per report; the sum over a bucket divided by its length is a rate. The series is
        # named after the field without `strip` (rejected_invalid_json -> invalid_json).
        select = ", ".join(
            f"sum({quote(f)}) / ($__interval_ms / 1000) AS {quote(f.removeprefix(strip))}" for f in fields
        )
        by = f", {quote(group)}" if group else ""
        return InfluxQLQuery(
            "A", f"SELECT {select} FROM {ingest} WHERE {where} GROUP BY time($__interval){by} fill(none)"
        )

    def gauge(select: str, by: str = "instance") -> InfluxQLQuery:
        return InfluxQLQuery(
            "A",
            f"SELECT {select} FROM {ingest} WHERE {where} GROUP BY time($__interval), {quote(by)} fill(none)",
            alias=f"$tag_{by} $col",
        )

    layout = p.Layout()
    layout.row("Ingest / การรับข้อมูล")
    layout.add(
        p.timeseries_panel(
            "Ingest rate",
            [per_second(["received", "accepted", "rejected", "duplicates"])],
            unit="reqps",
            description="Messages per second over all ingest instances.",
            min_interval_s=10,
        ),
        12,
        8,
    )
    codes = [f"rejected_{code.value}" for code in RejectCode]
    rejects = per_second(codes, strip="rejected_")
    layout.add(
        p.timeseries_panel(
            "Rejects by code",
            [rejects],
            unit="reqps",
            description="Rejected messages per second by reject code (the codes of the payload contract).",
            min_interval_s=10,
        ),
        12,
        8,
    )
    layout.add(
        p.timeseries_panel(
            "Reject ratio",
            [
                InfluxQLQuery(
                    "A",
                    f'SELECT sum("rejected") / sum("received") AS "reject ratio" FROM {ingest} WHERE {where} '
                    "GROUP BY time($__interval) fill(none)",
                )
            ],
            unit="percentunit",
            description="Share of received messages that were rejected, all vendors (the alert is per vendor).",
            min_interval_s=60,
            thresholds=p.limit_thresholds(REJECT_RATIO_LIMIT),
        ),
        8,
        8,
    )
    layout.add(
        p.timeseries_panel(
            "Spool lag",
            [gauge('max("spool_lag_s") AS "seconds"')],
            unit="s",
            description="Age of the oldest spooled reading not yet written to InfluxDB, per instance.",
            min_interval_s=10,
        ),
        8,
        8,
    )
    layout.add(
        p.timeseries_panel(
            "Write latency",
            [gauge('mean("write_latency_ms_mean") AS "mean", max("write_latency_ms_max") AS "max"')],
            unit="ms",
            description="InfluxDB write request latency per instance.",
            min_interval_s=10,
        ),
        8,
        8,
    )
    layout.add(
        p.timeseries_panel(
            "InfluxDB writes",
            [per_second(["write_points", "write_batches", "write_retries", "dead_letters"])],
            unit="reqps",
            description="Points and batches written per second, retries and readings given up on.",
            min_interval_s=10,
        ),
        12,
        8,
    )
    layout.add(
        p.timeseries_panel(
            LOSS_PANEL,
            [
                InfluxQLQuery(
                    "A",
                    "SELECT "
                    + ", ".join(f"sum({quote(f)}) AS {quote(f)}" for f in schema.INGEST_LOSS_FIELDS)
                    + f" FROM {ingest} WHERE {where} GROUP BY time($__interval) fill(none)",
                )
            ],
            unit="short",
            description="Loss ingest sees without the simulator: messages the broker dropped ($SYS), reconnects "
            "that found the broker session lost or restored from an old copy, records of damaged spool segments, "
            "rejections answered but not kept (a vendor over its reject store budget). Anything above 0 is lost "
            "data or evidence (each has an alert rule); the ingest log names the cause.",
            min_interval_s=10,
        ),
        12,
        8,
    )
    vendor_section(layout)
    layout.row("Pipelines / ไปป์ไลน์")
    layout.add(
        p.timeseries_panel(
            "Pipeline output: windows written",
            [
                InfluxQLQuery(
                    ref,
                    f"SELECT count({quote(field)}) AS {quote(name)} FROM {rollup_from(measurement)} "
                    "WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                )
                for ref, measurement, field, name in (
                    ("A", schema.AQI_MEASUREMENT, "aqi", "AQI points"),
                    ("B", schema.HEALTH_MEASUREMENT, "completeness", "sensor health points"),
                )
            ],
            unit="short",
            description="Points the AQI and sensor-health pipelines wrote per interval, by window start; "
            "a gap at the right edge that grows means a pipeline is behind.",
            min_interval_s=3600,
        ),
        12,
        8,
    )
    return GeneratedDashboard(
        OPERATIONS_FOLDER, f"{TAG}-operations", "operations.json", uid, to_model(dashboard, layout)
    )


def vendor_section(layout: p.Layout) -> None:
    """Per vendor (`ingest_vendors`, `ingest_rejects`): how much each vendor's sensors send, and why it is refused."""
    where = " AND ".join([var_match("instance", "instance"), var_match("vendor", "vendor"), "$timeFilter"])
    vendors = raw_from(schema.INGEST_VENDORS_MEASUREMENT)
    rejects = raw_from(schema.INGEST_REJECTS_MEASUREMENT)
    layout.row("Vendors / ผู้จำหน่าย")
    layout.add(
        p.timeseries_panel(
            REJECT_RATIO_PANEL,
            [
                InfluxQLQuery(
                    "A",
                    f'SELECT sum("rejected") * 1.0 / sum("received") AS "reject ratio" FROM {vendors} WHERE {where} '
                    'GROUP BY time($__interval), "vendor" fill(none)',
                    alias="$tag_vendor",
                )
            ],
            unit="percentunit",
            description=(
                f"Share of each vendor's messages that were rejected (`{schema.UNKNOWN_VENDOR}`: topics that name no "
                f"registered sensor). The alert fires above {REJECT_RATIO_LIMIT:.0%} over "
                f"{REJECT_RATIO_WINDOW_S // 60} min for a vendor that sent at least {REJECT_RATIO_MIN_MESSAGES} "
                "messages in them."
            ),
            min_interval_s=60,
            thresholds=p.limit_thresholds(REJECT_RATIO_LIMIT),
        ),
        12,
        8,
    )
    layout.add(
        p.timeseries_panel(
            "Rejects by code and vendor",
            [
                InfluxQLQuery(
                    "A",
                    f'SELECT sum("rejected") / ($__interval_ms / 1000) AS "rejected" FROM {rejects} WHERE {where} '
                    'GROUP BY time($__interval), "vendor", "code" fill(none)',
                    alias="$tag_vendor: $tag_code",
                )
            ],
            unit="reqps",
            description="Rejected messages per second by vendor and reject code (only the pairs that occurred).",
            min_interval_s=10,
        ),
        12,
        8,
    )
    layout.add(
        p.timeseries_panel(
            "Messages by vendor",
            [
                InfluxQLQuery(
                    "A",
                    f'SELECT sum("received") / ($__interval_ms / 1000) AS "received" FROM {vendors} WHERE {where} '
                    'GROUP BY time($__interval), "vendor" fill(none)',
                    alias="$tag_vendor",
                )
            ],
            unit="reqps",
            description="Messages per second from each vendor's sensors, accepted or not; 0 when a vendor went quiet.",
            min_interval_s=10,
        ),
        12,
        8,
    )
    layout.add(
        p.table_panel(
            "Rejects by vendor and code over the range",
            [
                InfluxQLQuery(
                    "A",
                    f'SELECT sum("rejected") AS "Rejected" FROM {rejects} WHERE {where} GROUP BY "vendor", "code"',
                    result_format="table",
                )
            ],
            description="What to tell each vendor: its rejected messages by code over the dashboard's range.",
            sort_by="Rejected",
            descending=True,
        ),
        12,
        8,
    )


def build_dashboards(registry: Registry) -> list[GeneratedDashboard]:
    """Every dashboard, in a stable order: each super-cluster's, then Operations."""
    out: list[GeneratedDashboard] = []
    for cluster in registry.super_clusters.values():
        out.extend(ClusterDashboards(registry, cluster).all())
    out.append(operations_dashboard())
    return out
