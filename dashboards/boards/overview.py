"""A super-cluster's Overview: AQI now, a map of districts and sensors, key figures by district and city."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from dashboards import panels as p
from dashboards.boards import air
from dashboards.frame import ClusterView, GeneratedDashboard
from dashboards.influxql import InfluxQLQuery, literal, quote, rollup_from
from storage import schema


def overview(view: ClusterView) -> GeneratedDashboard:
    slug = "overview"
    dashboard = view.dashboard(
        slug, "Overview", "ภาพรวม", f"Air quality, sensors and key figures of {view.cluster.name.en} now."
    )
    view.variables(dashboard)
    layout = p.Layout()
    layout.row("Now / ขณะนี้")
    layout.add(air.aqi_now(view), 12, 6)
    health_where = " AND ".join([*view.place_filters(), "$timeFilter"])
    aqi_layer = air.aqi_queries(view, 'last("aqi") AS "aqi"', group_time=False, result_format="table")
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
            centre=view.centre,
            zoom=10,
        ),
        12,
        12,
    )
    layout.add(key_figures(view, "district"), 12, 6)
    layout.add(key_figures(view, "city"), 24, 4)
    return view.generated(slug, dashboard, layout)


def key_figures(view: ClusterView, level: str) -> p.AnyPanel:
    """A table per district or city: AQI, dominant pollutant, completeness, readings, outliers."""
    tag = "district" if level == "district" else "city"
    aqi_where = [f"{quote('level')} = {literal(level)}", *view.place_filters(level == "district"), "$timeFilter"]
    health_where = [*view.place_filters(level == "district"), "$timeFilter"]
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
