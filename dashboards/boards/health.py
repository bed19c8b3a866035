"""A super-cluster's Sensor health dashboard: completeness, outliers, flatlines, gaps, silent sensors, anomalies.

`silence_query` is both the silent-sensors table of each kind and the silent-sensor alert rule's query.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import panels as p
from dashboards.frame import ClusterView, GeneratedDashboard, tag_variable
from dashboards.influxql import InfluxQLQuery, quote, raw_from, rollup_from, var_match
from sensors.registry import Kind
from storage import schema

SEQ_GAPS_PANEL = "Sequence gaps by vendor"  # readings the sensors numbered that never arrived
ANOMALIES_PANEL = "Anomalies by kind and type"
ANOMALY_ROWS = 100
# Silence: a sensor is silent when none of its readings arrived in the last SILENT_INTERVALS of its
# kind's interval_s. Buckets of one interval are counted with fill(0), so a silent sensor shows 0
# rather than disappearing; the mean of the last SILENT_INTERVALS + 1 buckets covers at least
# SILENT_INTERVALS full intervals although the newest bucket is still filling.
SILENT_INTERVALS = 3
SILENT_LOOKBACK = "6h"


def sensor_health(view: ClusterView) -> GeneratedDashboard:
    slug = "sensor-health"
    dashboard = view.dashboard(
        slug,
        "Sensor health",
        "สถานะเซนเซอร์",
        "Completeness, silent sensors, flatlines, outliers and sequence gaps by vendor, district and sensor.",
    )
    kinds_regex = "|".join(kind.id for kind in view.kinds)
    health = rollup_from(schema.HEALTH_MEASUREMENT)
    view.variables(
        dashboard,
        tag_variable(
            "vendor",
            "Vendor / ผู้จำหน่าย",
            f'SHOW TAG VALUES FROM {health} WITH KEY = "vendor" WHERE {" AND ".join(view.place_filters())}',
        ),
        tag_variable("kind", "Kind / ประเภท", f"SHOW MEASUREMENTS WITH MEASUREMENT =~ /^({kinds_regex})$/"),
        view.sensor_variable(view.kinds, source="/^$kind$/"),
    )
    where = " AND ".join(
        [*view.place_filters(), var_match("vendor", "vendor"), var_match("sensor_id", "sensor"), "$timeFilter"]
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
            view.names,
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
    for kind in view.kinds:
        layout.add(
            p.table_panel(
                silent_panel_title(kind),
                [silence_query(kind, view.place_filters(), table=True)],
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
    filters = [*view.place_filters(), var_match("vendor", "vendor"), var_match("kind", "kind")]
    anomalies_section(view, layout, filters)
    return view.generated(slug, dashboard, layout)


def anomalies_section(view: ClusterView, layout: p.Layout, filters: Sequence[str]) -> None:
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


def silent_panel_title(kind: Kind) -> str:
    return f"{kind.name.en}: readings per interval, latest"
