"""The Operations dashboard, across all super-clusters: ingest, vendors, spool, InfluxDB writes, pipeline output.

The reject-ratio and loss alert rules link to its panels and share its limits.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import panels as p
from dashboards.frame import TAG, GeneratedDashboard, tag_variable, to_model
from dashboards.influxql import InfluxQLQuery, quote, raw_from, rollup_from, var_match
from sensors.contract import RejectCode
from storage import schema

OPERATIONS_FOLDER = "Smartcity operations · ปฏิบัติการ"
LOSS_PANEL = "Loss seen by ingest"
# The reject-ratio alert: per vendor, over a window, only with enough messages that a few bad ones do not page.
REJECT_RATIO_LIMIT = 0.05
REJECT_RATIO_WINDOW_S = 900
REJECT_RATIO_MIN_MESSAGES = 100
REJECT_RATIO_PANEL = "Reject ratio by vendor"


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
