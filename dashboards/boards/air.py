"""The Thai AQI section of a dashboard whose kind measures AQI pollutants, and the PCD colours.

`AQI_DISTRICT_PANEL` is the chart the AQI alert rule links to; `aqi_queries` also feeds the Overview.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import panels as p
from dashboards.frame import ClusterView
from dashboards.influxql import InfluxQLQuery, quote, rollup_from
from sensors.aqi import POLLUTANTS
from storage import schema

AQI_DISTRICT_PANEL = "AQI by district"  # alert rules link to it (dashboards/alerts.py)


def aqi_queries(
    view: ClusterView, select: str, *, group_time: bool, result_format: str = "time_series"
) -> InfluxQLQuery:
    where = [f"{quote('level')} = 'district'", *view.place_filters(), "$timeFilter"]
    group = 'GROUP BY time($__interval), "district" fill(none)' if group_time else 'GROUP BY "district"'
    return InfluxQLQuery(
        "A",
        f"SELECT {select} FROM {rollup_from(schema.AQI_MEASUREMENT)} WHERE {' AND '.join(where)} {group}",
        alias="$tag_district",
        result_format=result_format,  # type: ignore[arg-type]
    )


def aqi_now(view: ClusterView) -> p.AnyPanel:
    """The latest AQI of each district in its band colour (also on the Overview)."""
    now = p.stat_panel(
        "AQI now by district",
        [aqi_queries(view, 'last("aqi") AS "aqi"', group_time=False)],
        description="Latest hourly Thai AQI of each district, coloured by the PCD band.",
        thresholds=p.aqi_thresholds(),
    )
    return p.display_names(now, view.names)


def aqi_section(view: ClusterView, layout: p.Layout) -> None:
    layout.row("Thai AQI (PCD) / ดัชนีคุณภาพอากาศ")
    layout.add(aqi_now(view), 24, 4)
    trend = p.timeseries_panel(
        AQI_DISTRICT_PANEL,
        [aqi_queries(view, 'max("aqi") AS "aqi"', group_time=True)],
        unit="short",
        description="Hourly Thai AQI (highest sub-index of PM2.5, PM10, O3, CO, NO2, SO2) with the PCD bands.",
        min_interval_s=3600,
        thresholds=p.aqi_thresholds(),
        threshold_style=cm.GraphThresholdsStyleMode.AREA,
    )
    layout.add(p.display_names(trend, view.names), 16, 9)
    comparison = p.bargauge_panel(
        "District comparison: mean AQI over the range",
        [aqi_queries(view, 'mean("aqi") AS "aqi"', group_time=False)],
        thresholds=p.aqi_thresholds(),
    )
    layout.add(p.display_names(comparison, view.names), 8, 9)
    dominant = p.table_panel(
        "Dominant pollutant by district",
        [
            aqi_queries(
                view,
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


def pollutant_thresholds(metric: str, unit: str) -> Any:
    """Band colours at the PCD breakpoints, for a metric that is an AQI pollutant in the same unit."""
    for pollutant in POLLUTANTS:
        if pollutant.name == metric and pollutant.unit == unit:
            lower = [lo for lo, _ in pollutant.breakpoints[1:]] + [pollutant.top]
            return p.band_step_thresholds(lower)
    return None


def band_mapping_json() -> list[dict[str, Any]]:
    return [mapping.to_json() for mapping in p.band_mappings()]
