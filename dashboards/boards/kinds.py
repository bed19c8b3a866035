"""A dashboard of one or more kinds (Air quality, Flood & weather, Mobility & city services, or a kind alone).

Per kind a row with one chart per metric by district, a chart per site for metrics with site
thresholds (the site's warning and danger lines; the site-threshold alert rules link to them), and
a collapsed row of per-sensor charts; before a kind that measures AQI pollutants, the AQI section.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.models import common as cm

from dashboards import panels as p
from dashboards.boards import air
from dashboards.frame import ClusterView, GeneratedDashboard
from dashboards.influxql import MetricChart, literal, quote
from sensors.registry import Kind, Metric


def kinds_dashboard(
    view: ClusterView, slug: str, title_en: str, title_th: str, kinds: Sequence[Kind]
) -> GeneratedDashboard:
    names = ", ".join(kind.name.en for kind in kinds)
    dashboard = view.dashboard(slug, title_en, title_th, f"{names} in {view.cluster.name.en}, from the registry.")
    view.variables(dashboard, view.sensor_variable(kinds))
    layout = p.Layout()
    for kind in kinds:
        if any(air.pollutant_thresholds(m.name, m.unit) for m in kind.metrics):
            air.aqi_section(view, layout)
        kind_section(view, layout, kind)
    return view.generated(slug, dashboard, layout)


def kind_section(view: ClusterView, layout: p.Layout, kind: Kind) -> None:
    layout.row(f"{kind.name.en} / {kind.name.th}")
    for metric in kind.metrics:
        chart = MetricChart(kind, metric.name, "district", filters=view.place_filters())
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
            thresholds=air.pollutant_thresholds(metric.name, metric.unit),
            threshold_style=cm.GraphThresholdsStyleMode.DASHED,
        )
        layout.add(p.display_names(panel, view.names), 12, 8)
    for metric_name in kind.site_thresholds:
        threshold_metric = kind.metric(metric_name)
        assert threshold_metric is not None  # the registry checks site_thresholds against the metrics
        for site_id, sensor_ids in view.sites_of(kind):
            threshold = view.registry.threshold(site_id, metric_name)
            if threshold is None:
                continue
            site = view.registry.sites[site_id]
            chart = MetricChart(
                kind,
                metric_name,
                "sensor",
                filters=[view.scope],
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
        chart = MetricChart(kind, metric.name, "sensor", filters=view.place_filters(), sensor_filter="sensor")
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


def metric_title(metric: Metric) -> str:
    """A chart's title: the metric's description, or for a `sum` metric what is charted ("Rainfall per hour")."""
    if metric.aggregate == "sum":
        return f"{metric.name.replace('_', ' ').capitalize()} per hour"
    return metric.description


def site_panel_title(kind: Kind, metric: str, site_name: str) -> str:
    suffix = f" ({metric})" if len(kind.site_thresholds) > 1 else ""
    return f"{kind.name.en} at {site_name}{suffix}"
