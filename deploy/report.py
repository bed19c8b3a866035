"""`smartcity report`: static HTML pages of the results, for people without Grafana.

    smartcity report --out report/                      # the last 24 h of data present
    smartcity report --out report/ --from 2026-03-01 --to 2026-03-08T12:00

writes `index.html` (a card per super-cluster: air quality now, sensor
completeness, link) and one `{super_cluster}.html` per super-cluster with

- the Thai AQI now per district, coloured by the PCD band, and by district
  over time on the band colours, with the band legend in Thai and English;
- a section per sensor kind of the super-cluster's fleet: one chart per metric
  by district (hourly means; 1-minute means for ranges up to 6 h), pollutants
  on their PCD band breakpoints; a metric whose registry `aggregate` is `sum`
  (rain, vehicles since the previous reading) as a total per hour: the district's
  mean reading times the readings an hour holds; a metric with site thresholds
  (flood water level) gets a chart per site instead: each gauge's maximum
  against the site's warning and danger levels;
- sensor health: completeness by vendor over time, and by kind over the range.

Everything comes from the registry and the rollups of `storage.schema`
(`aqi_1h`, `{kind}_1h` / `{kind}_1m`, `sensor_health_1h`), the figures Grafana
shows (a sensor's minutes from raw where no sensor-level 1 m rollup is stored,
as the dashboards do), so a new kind, metric, district or site appears without code. An empty
chart is an explicit "no data in range" note. Charts are plotly.js, written
once as `plotly.min.js` beside the pages: no network is needed, and the folder
can be copied or zipped whole. Times are shown in the report's time zone
(default Asia/Bangkok, the pilots' local time).

Size: about 930 lines: queries, charts (plotly figures) and HTML pages. The seam is three modules
(query/figure/render); not yet cut, kept whole while the pipelines' tiers (raw vs 1 m) settle.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import plotly.io as pio
import plotly.offline
from rich.console import Console

from sensors.aqi import BANDS, POLLUTANTS, Band, band_for
from sensors.cli import registry_from, registry_option
from sensors.errors import SmartcityError
from sensors.registry import Kind, Metric, Registry, SuperCluster
from sensors.timeparse import time_option
from storage.query import QueryClient, Series, ident
from storage.schema import AQI_MEASUREMENT, HEALTH_MEASUREMENT, rollup_field, rollup_levels, rollup_measurement
from storage.settings import InfluxSettings

logger = logging.getLogger(__name__)

DEFAULT_TZ = "Asia/Bangkok"
DEFAULT_SPAN = timedelta(hours=24)
# Up to this span the charts use the 1-minute rollups (at most 360 points a line), beyond it the hourly ones.
MINUTE_TIER_MAX_SPAN = timedelta(hours=6)
WINDOW_SECONDS = {"1m": 60, "1h": 3600}
WINDOW_LABELS = {"1m": "1-minute", "1h": "Hourly"}
# District rollup fields by metric `aggregate`: a level's mean; an amount's sum and count (see per_hour_chart).
DISTRICT_STATS = {"mean": ("mean",), "sum": ("sum", "count")}
PLOTLY_JS = "plotly.min.js"
NO_DATA = "No data in range · ไม่มีข้อมูลในช่วงเวลานี้"
POLLUTANT_LABELS = {"pm25": "PM2.5", "pm10": "PM10", "o3": "O₃", "co": "CO", "no2": "NO₂", "so2": "SO₂"}
# SenML unit symbols as people read them; anything else is shown as written in the registry.
UNIT_LABELS = {"ug/m3": "µg/m³", "Cel": "°C", "%RH": "% RH", "deg": "°", "count": ""}


class ReportError(SmartcityError):
    """The report cannot be made (no data, bad range); the message says what to do."""


@dataclass(frozen=True)
class TimeRange:
    """[start, end) in UTC; `window` is the rollup tier the kind charts read."""

    start: datetime
    end: datetime

    @property
    def window(self) -> str:
        return "1m" if self.end - self.start <= MINUTE_TIER_MAX_SPAN else "1h"


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote."""

    index: Path
    pages: dict[str, Path]
    range: TimeRange
    generated: datetime


# -- charts -------------------------------------------------------------------------------


@dataclass
class Trace:
    """One line (or the bars) of a chart; `None` values break a line."""

    name: str
    x: list[Any]
    y: list[float | None]


@dataclass
class Chart:
    id: str
    title: str
    note: str
    unit: str
    traces: list[Trace]
    # Background bands (low, high or None for open-ended, colour) and horizontal levels (value, label, colour).
    bands: list[tuple[float, float | None, str]] = field(default_factory=list)
    levels: list[tuple[float, str, str]] = field(default_factory=list)
    bar: bool = False
    y_range: tuple[float, float] | None = None

    @property
    def empty(self) -> bool:
        return not any(v is not None for trace in self.traces for v in trace.y)


@dataclass
class Section:
    id: str
    title: str
    charts: list[Chart] = field(default_factory=list)
    html: str = ""  # markup shown before the charts (cards, legends, tables)


@dataclass
class AqiNow:
    """The latest hourly AQI of a district in the range (None: no AQI in range)."""

    district: str
    aqi: int | None = None
    band: Band | None = None
    dominant: str = ""
    time: datetime | None = None


@dataclass
class ClusterPage:
    cluster: SuperCluster
    sections: list[Section]
    aqi_now: list[AqiNow]
    completeness: float | None
    sensors: int
    points: int


def unit_label(unit: str) -> str:
    return UNIT_LABELS.get(unit, unit)


def per_hour(unit: str) -> str:
    """The unit of a total per hour: `mm/h`, or `/h` for a count."""
    return f"{unit_label(unit)}/h"


def pollutant_bands(metric: Metric) -> list[tuple[float, float | None, str]]:
    """The PCD band breakpoints of a metric that is a Thai AQI pollutant (name and unit match), else []."""
    for pollutant in POLLUTANTS:
        if pollutant.name == metric.name and pollutant.unit == metric.unit:
            lows = [lo for lo, _ in pollutant.breakpoints] + [pollutant.top]
            return [(low, high, band.colour) for low, high, band in zip(lows, [*lows[1:], None], BANDS, strict=True)]
    return []


def aqi_bands() -> list[tuple[float, float | None, str]]:
    lows = [band.aqi_min for band in BANDS]
    return [(low, high, band.colour) for low, high, band in zip(lows, [*lows[1:], None], BANDS, strict=True)]


def with_gaps(points: Iterable[tuple[datetime, float]], step_s: int) -> tuple[list[datetime], list[float | None]]:
    """Times and values in order, with a None after any missing window so the line breaks there."""
    x: list[datetime] = []
    y: list[float | None] = []
    for when, value in sorted(points):
        if x and (when - x[-1]).total_seconds() > 1.5 * step_s:
            x.append(x[-1] + timedelta(seconds=step_s))
            y.append(None)
        x.append(when)
        y.append(value)
    return x, y


def _local(when: datetime, tz: tzinfo) -> str:
    # plotly.js has no time zones: it draws wall-clock strings as given.
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def figure(chart: Chart, time_range: TimeRange, tz: tzinfo) -> dict[str, Any]:
    """The plotly figure (data + layout) of a chart."""
    values = [v for trace in chart.traces for v in trace.y if v is not None]
    unit = unit_label(chart.unit)
    data: list[dict[str, Any]] = []
    for trace in chart.traces:
        if chart.bar:
            data.append(
                {
                    "type": "bar",
                    "name": trace.name,
                    "x": trace.x,
                    "y": trace.y,
                    "marker": {"color": "#2f6fab"},
                    "texttemplate": "%{y:.1f}",
                    "hovertemplate": f"%{{x}}: %{{y:.3~f}} {unit}<extra></extra>",
                }
            )
        else:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": trace.name,
                    "x": [_local(t, tz) for t in trace.x],
                    "y": trace.y,
                    "connectgaps": False,
                    "marker": {"size": 4},
                    "hovertemplate": f"%{{x}}<br>%{{y:.3~f}} {unit}<extra>{html.escape(trace.name)}</extra>",
                }
            )
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    y_range = chart.y_range
    if chart.bands or chart.levels:
        # Fix the axis so bands and levels show; open-ended bands reach the top.
        marks = [level for level, _, _ in chart.levels]
        top = max([*values, *marks, chart.bands[1][0] if len(chart.bands) > 1 else 0.0]) * 1.12 or 1.0
        bottom = min([0.0, *values, *marks])
        y_range = y_range or (bottom, top)
    for low, high, colour in chart.bands:
        shapes.append(
            {
                "type": "rect",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "yref": "y",
                "y0": low,
                "y1": high if high is not None else (y_range[1] if y_range else low),
                "fillcolor": colour,
                "opacity": 0.2,
                "line": {"width": 0},
                "layer": "below",
            }
        )
    for level, label, colour in chart.levels:
        shapes.append(
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "yref": "y",
                "y0": level,
                "y1": level,
                "line": {"color": colour, "width": 2, "dash": "dash"},
            }
        )
        annotations.append(
            {
                "xref": "paper",
                "x": 1,
                "y": level,
                "xanchor": "right",
                "yanchor": "bottom",
                "text": html.escape(label),
                "showarrow": False,
                "font": {"color": colour, "size": 11},
            }
        )
    xaxis: dict[str, Any] = {"gridcolor": "#eceff3", "automargin": True}
    if not chart.bar:
        xaxis.update(type="date", range=[_local(time_range.start, tz), _local(time_range.end, tz)])
    yaxis: dict[str, Any] = {"title": {"text": unit}, "gridcolor": "#eceff3", "automargin": True}
    if y_range:
        yaxis["range"] = list(y_range)
    return {
        "data": data,
        "layout": {
            "template": "none",
            "height": 340,
            "margin": {"l": 48, "r": 12, "t": 10, "b": 10},
            "paper_bgcolor": "#ffffff",  # also keeps the toolbar light (plotly picks it by contrast)
            "plot_bgcolor": "#ffffff",
            "font": {"family": "system-ui, 'Noto Sans Thai', 'Noto Sans', sans-serif", "size": 12},
            "xaxis": xaxis,
            "yaxis": yaxis,
            "showlegend": not chart.bar,
            "legend": {"orientation": "h", "x": 0, "y": -0.15, "yanchor": "top"},
            "hovermode": "closest",
            "shapes": shapes,
            "annotations": annotations,
        },
    }


# -- data -----------------------------------------------------------------------------------

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
        tz: tzinfo,
        on_step: Callable[[str], None],
    ) -> None:
        self.client = client
        self.tz = tz
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

    def district_name(self, district_id: str) -> str:
        district = self.registry.districts.get(district_id)
        return f"{district.name.en} · {district.name.th}" if district else district_id

    def district_traces(self, rows: Mapping[str, list[dict[str, Any]]], column: str, step_s: int) -> list[Trace]:
        """One trace per district, registry order first, districts the registry does not know after."""
        order = [d.id for d in self.districts] + sorted(set(rows) - {d.id for d in self.districts})
        traces = []
        for district_id in order:
            points = [(r["time"], float(r[column])) for r in rows.get(district_id, []) if r.get(column) is not None]
            if points:
                traces.append(Trace(self.district_name(district_id), *with_gaps(points, step_s)))
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
        cards = "".join(self.aqi_card(item) for item in now)
        markup = f'<div class="aqi-now">{cards}</div>{band_legend()}'
        return Section("aqi", "Air quality, latest hour · คุณภาพอากาศชั่วโมงล่าสุด", [chart], markup), now

    def aqi_card(self, item: AqiNow) -> str:
        name = html.escape(self.district_name(item.district))
        if item.aqi is None or item.band is None or item.time is None:
            return (
                f'<div class="aqi-card nodata-card"><b>{name}</b><span class="aqi">&ndash;</span>'
                f"<span>{NO_DATA}</span></div>"
            )
        band = item.band
        dominant = f" · {html.escape(POLLUTANT_LABELS.get(item.dominant, item.dominant))}" if item.dominant else ""
        return (
            f'<div class="aqi-card" data-band="{band.number}" style="background:{band.colour};'
            f'color:{text_colour(band.colour)}"><b>{name}</b><span class="aqi">{item.aqi}</span>'
            f"<span>{html.escape(band.label_th)} · {html.escape(band.label_en)}</span>"
            f"<small>AQI{dominant} · {html.escape(item.time.astimezone(self.tz).strftime('%d %b %H:%M'))}</small></div>"
        )

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
            district = self.district_name(self.registry.district_of_site[site_id])
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
        table = health_table([(name, totals[k], ratio) for k, name, ratio in zip(kinds, names, ratios, strict=True)])
        section = Section("health", "Sensor health · สถานะเซนเซอร์", [vendor_chart, kind_chart], table)
        return section, overall

    def kind_name(self, kind_id: str) -> str:
        kind = self.registry.kinds.get(kind_id)
        return f"{kind.name.en} · {kind.name.th}" if kind else kind_id


# -- pages ------------------------------------------------------------------------------------

CSS = """
* { box-sizing: border-box; }
/* A scrollbar that appears after the charts were drawn would make them overflow. */
html { overflow-y: scroll; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans Thai", "Noto Sans", sans-serif;
  color: #1d2433; background: #f4f6f9; }
header { background: #0f3a5f; color: #fff; padding: 1rem clamp(.75rem, 3vw, 2rem); }
header h1 { margin: 0 0 .25rem; font-size: clamp(1.3rem, 4vw, 1.9rem); }
header p { margin: .15rem 0; color: #d7e6f5; }
header a { color: #fff; }
main { padding: 0 clamp(.5rem, 3vw, 2rem) 2rem; max-width: 1600px; margin: 0 auto; }
nav.toc { display: flex; flex-wrap: wrap; gap: .4rem; margin: 1rem 0 .5rem; }
nav.toc a { background: #fff; border: 1px solid #d6dbe3; border-radius: 999px; padding: .2rem .7rem;
  color: #0f3a5f; text-decoration: none; font-size: .9rem; }
h2 { font-size: 1.25rem; margin: 1.75rem 0 .75rem; padding-bottom: .3rem; border-bottom: 2px solid #d6dbe3; }
h3 { font-size: 1rem; margin: 0 0 .2rem; }
.grid { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(min(100%, 32rem), 1fr)); }
.card { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: .75rem; min-width: 0; margin: 0; }
.note { color: #5b6475; font-size: .85rem; margin: 0 0 .4rem; }
.chart { width: 100%; height: 340px; }
.nodata { height: 140px; display: flex; align-items: center; justify-content: center; text-align: center;
  color: #5b6475; background: repeating-linear-gradient(45deg, #f6f7f9, #f6f7f9 10px, #eef0f4 10px, #eef0f4 20px);
  border-radius: 6px; }
.aqi-now { display: grid; gap: .6rem; grid-template-columns: repeat(auto-fill, minmax(min(100%, 10rem), 1fr)); }
.aqi-card { border-radius: 8px; padding: .6rem .8rem; display: flex; flex-direction: column; gap: .1rem; }
.aqi-card .aqi { font-size: 2rem; font-weight: 700; line-height: 1.1; }
.nodata-card { background: #fff; border: 1px dashed #b9c0cc; color: #5b6475; }
.legend { display: flex; flex-wrap: wrap; gap: .35rem .9rem; margin: .8rem 0 1rem; font-size: .85rem; }
.legend span { display: inline-flex; align-items: center; gap: .35rem; }
.legend i { width: 1.1rem; height: 1.1rem; border-radius: 3px; display: inline-block; }
.table-wrap { overflow-x: auto; margin-bottom: 1rem; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: .9rem; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid #e3e6ec; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; white-space: normal; }
.clusters { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(min(100%, 24rem), 1fr));
  margin-top: 1.25rem; }
.clusters h2 { margin-top: 0; border: 0; }
footer { color: #5b6475; font-size: .8rem; padding: 1rem clamp(.5rem, 3vw, 2rem); }
"""

LOADER = """
const figures = JSON.parse(document.getElementById("figures").textContent);
for (const [id, fig] of Object.entries(figures)) {
  Plotly.newPlot(id, fig.data, fig.layout,
    {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"]});
}
"""


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on a `#RRGGBB` background (WCAG relative luminance)."""
    channels = [int(background[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "#111111" if luminance > 0.18 else "#ffffff"


def band_legend() -> str:
    items = []
    for band in BANDS:
        span = f"{band.aqi_min}&ndash;{band.aqi_max}" if band.aqi_max is not None else f"> {band.aqi_min - 1}"
        items.append(
            f'<span><i style="background:{band.colour}"></i>{span} {html.escape(band.label_th)} · '
            f"{html.escape(band.label_en)}</span>"
        )
    title = "<b>Thai AQI bands (PCD) · ระดับดัชนีคุณภาพอากาศ</b>"
    return f'<div class="legend" aria-label="Thai AQI bands (PCD)">{title}{"".join(items)}</div>'


def health_table(rows: Sequence[tuple[str, Mapping[str, float], float]]) -> str:
    if not rows:
        return ""
    head = (
        "<tr><th>Kind · ประเภท</th><th>Received</th><th>Expected</th><th>Completeness</th>"
        "<th>Silent sensors</th><th>Outliers</th><th>Flatline</th></tr>"
    )
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{t['received']:,.0f}</td><td>{t['expected']:,.0f}</td>"
        f"<td>{100 * ratio:.1f} %</td><td>{t['silent']:.0f}</td><td>{t['outliers']:,.0f}</td>"
        f"<td>{t['flatline']:,.0f}</td></tr>"
        for name, t, ratio in rows
    )
    return f'<div class="table-wrap"><table>{head}{body}</table></div>'


def page(title: str, header: str, body: str, figures: Mapping[str, Any] | None = None) -> str:
    scripts = ""
    if figures:
        # `<` escaped so no string in the data can close the script element.
        payload = json.dumps(figures, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
        scripts = (
            f'<script src="{PLOTLY_JS}" charset="utf-8"></script>'
            f'<script type="application/json" id="figures">{payload}</script><script>{LOADER}</script>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="th"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><header>{header}</header><main>{body}</main>"
        "<footer>Generated by <code>smartcity report</code> from InfluxDB rollups; Thai AQI after the "
        "Pollution Control Department (PCD).</footer>"
        f"{scripts}</body></html>\n"
    )


def range_text(time_range: TimeRange, tz: tzinfo) -> str:
    start, end = time_range.start.astimezone(tz), time_range.end.astimezone(tz)
    offset = start.strftime("%z")
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} (UTC{offset[:3]}:{offset[3:]})"


def cluster_title(registry: Registry, cluster: SuperCluster) -> str:
    cities = ", ".join(f"{c.name.en} · {c.name.th}" for c in cluster.cities)
    return f"{cluster.name.en} · {cluster.name.th} — {cities}"


def render_cluster(
    page_data: ClusterPage, registry: Registry, time_range: TimeRange, tz: tzinfo, generated: str
) -> str:
    cluster = page_data.cluster
    title = cluster_title(registry, cluster)
    others = " · ".join(
        f'<a href="{html.escape(c)}.html">{html.escape(registry.super_clusters[c].name.en)}</a>'
        for c in registry.super_clusters
        if c != cluster.id
    )
    header = (
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Range · ช่วงเวลา: {html.escape(range_text(time_range, tz))}</p>"
        f'<p>Generated · สร้างเมื่อ {html.escape(generated)} · <a href="index.html">All super-clusters · '
        f"ทุกกลุ่มพื้นที่</a>{' · ' + others if others else ''}</p>"
    )
    toc = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in page_data.sections)
    parts = [f'<nav class="toc">{toc}</nav>']
    figures: dict[str, Any] = {}
    for section in page_data.sections:
        cards = []
        for chart in section.charts:
            if chart.empty:
                plot = f'<div class="nodata" data-chart="{html.escape(chart.id)}">{NO_DATA}</div>'
            else:
                plot = f'<div class="chart" id="{html.escape(chart.id)}"></div>'
                figures[chart.id] = figure(chart, time_range, tz)
            cards.append(
                f'<figure class="card"><h3>{html.escape(chart.title)}</h3>'
                f'<p class="note">{html.escape(chart.note)}</p>{plot}</figure>'
            )
        parts.append(
            f'<section id="{html.escape(section.id)}"><h2>{html.escape(section.title)}</h2>{section.html}'
            f'<div class="grid">{"".join(cards)}</div></section>'
        )
    # Validates every figure against plotly's schema (a wrong attribute fails here, not in a reader's browser).
    checked = {key: json.loads(pio.to_json(fig, validate=True)) for key, fig in figures.items()}
    return page(title, header, "".join(parts), checked)


def render_index(
    pages: Sequence[ClusterPage], registry: Registry, time_range: TimeRange, tz: tzinfo, generated: str, source: str
) -> str:
    cards = []
    for item in pages:
        cluster = item.cluster
        worst = max((a for a in item.aqi_now if a.aqi is not None), key=lambda a: a.aqi or 0, default=None)
        if worst is not None and worst.band is not None:
            district = registry.districts.get(worst.district)
            where = f"{district.name.en} · {district.name.th}" if district else worst.district
            aqi = (
                f'<p><span class="aqi-card" style="display:inline-flex;background:{worst.band.colour};'
                f'color:{text_colour(worst.band.colour)}"><b>AQI {worst.aqi}</b></span> '
                f"highest in the latest hour · สูงสุดในชั่วโมงล่าสุด: {html.escape(where)} "
                f"({html.escape(worst.band.label_th)} · {html.escape(worst.band.label_en)})</p>"
            )
        else:
            aqi = f"<p>AQI: {NO_DATA}</p>"
        health = (
            f"<p>Sensor completeness · ความครบถ้วน: {100 * item.completeness:.1f} % of {item.sensors} sensors</p>"
            if item.completeness is not None
            else f"<p>Sensor completeness: {NO_DATA}</p>"
        )
        cities = ", ".join(f"{c.name.en} · {c.name.th}" for c in cluster.cities)
        cards.append(
            f'<div class="card"><h2><a href="{html.escape(cluster.id)}.html">{html.escape(cluster.name.en)} · '
            f"{html.escape(cluster.name.th)}</a></h2><p>{html.escape(cities)}</p>{aqi}{health}"
            f'<p><a href="{html.escape(cluster.id)}.html">Open the report · เปิดรายงาน →</a></p></div>'
        )
    header = (
        "<h1>Smart city sensor report · รายงานข้อมูลเซนเซอร์เมืองอัจฉริยะ</h1>"
        f"<p>Range · ช่วงเวลา: {html.escape(range_text(time_range, tz))}</p>"
        f"<p>Generated · สร้างเมื่อ {html.escape(generated)} from {html.escape(source)}</p>"
    )
    body = f'<div class="clusters">{"".join(cards)}</div>{band_legend()}'
    return page("Smart city sensor report", header, body)


# -- the report --------------------------------------------------------------------------------


def write_report(
    out_dir: Path,
    *,
    settings: InfluxSettings,
    registry: Registry,
    start: datetime | None = None,
    end: datetime | None = None,
    tz: tzinfo | None = None,
    on_step: Callable[[str], None] = lambda _: None,
) -> Report:
    """Query InfluxDB and write `out_dir/index.html`, one page per super-cluster and `plotly.min.js`.

    The range defaults to the 24 h before the end of the latest data; raises
    `ReportError` when the database has no data, or none in the range.
    """
    tz = tz or ZoneInfo(DEFAULT_TZ)
    generated_at = datetime.now(UTC)
    with QueryClient(settings) as client:
        on_step("finding the latest data")
        latest = latest_data_end(client, settings, registry)
        if latest is None:
            raise ReportError(
                f"no AQI, rollup or sensor-health data in InfluxDB database {settings.db!r} at {settings.url}: "
                "run the pipelines first ('smartcity pipeline run')"
            )
        if end is None:
            end = latest
            if start is not None and start >= end:
                raise ReportError(f"no data after --from {start.isoformat()}: the latest data ends {end.isoformat()}")
        start = start or end - DEFAULT_SPAN
        if start >= end:
            raise ReportError(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
        time_range = TimeRange(start.astimezone(UTC), end.astimezone(UTC))
        pages = []
        for cluster in registry.super_clusters.values():
            pages.append(ClusterReport(client, settings, registry, cluster, time_range, tz, on_step).build())
    if not any(p.points for p in pages):
        raise ReportError(
            f"no data between {range_text(time_range, tz)} in database {settings.db!r} "
            f"(the latest data ends {latest.astimezone(tz):%Y-%m-%d %H:%M}); choose another --from/--to"
        )
    on_step("writing pages")
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = f"{generated_at.astimezone(tz):%Y-%m-%d %H:%M}"
    written: dict[str, Path] = {}
    for item in pages:
        path = out_dir / f"{item.cluster.id}.html"
        path.write_text(render_cluster(item, registry, time_range, tz, generated), encoding="utf-8")
        written[item.cluster.id] = path
    (out_dir / PLOTLY_JS).write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    index = out_dir / "index.html"
    source = f"InfluxDB {settings.url}, database {settings.db}"
    index.write_text(render_index(pages, registry, time_range, tz, generated, source), encoding="utf-8")
    return Report(index, written, time_range, generated_at)


# -- command line --------------------------------------------------------------------------------


def _zone(ctx: click.Context, param: click.Parameter, value: str) -> tzinfo:
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone {value!r} (e.g. Asia/Bangkok, UTC)") from None


@click.command("report")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for index.html, one page per super-cluster and plotly.min.js (created if missing).",
)
@time_option("--from", "start", help="Start of the range [default: --to minus 24 h].")
@time_option("--to", "end", help="End of the range [default: the end of the latest data].")
@click.option(
    "--tz",
    default=DEFAULT_TZ,
    show_default=True,
    callback=_zone,
    help="Time zone the pages are shown in (a bare --from/--to is Bangkok time whatever this is).",
)
@registry_option
def report_command(
    out_dir: Path, start: datetime | None, end: datetime | None, tz: tzinfo, registry_paths: Sequence[Path]
) -> None:
    """Write static HTML pages (charts of AQI, pollutants, flood levels, traffic, sensor health) from InfluxDB."""
    if start is not None and end is not None and start >= end:
        raise click.BadParameter("must be before --to", param_hint="--from")
    registry = registry_from(registry_paths)
    settings = InfluxSettings.from_env()
    console = Console(stderr=True)
    with console.status("report: querying InfluxDB") as status:
        report = write_report(
            out_dir,
            settings=settings,
            registry=registry,
            start=start,
            end=end,
            tz=tz,
            on_step=lambda message: status.update(f"report: {message}"),
        )
    console.print(f"[dim]report: {range_text(report.range, tz)}, {len(report.pages)} super-cluster page(s)[/]")
    click.echo(str(report.index))


__all__ = [
    "Report",
    "ReportError",
    "TimeRange",
    "latest_data_end",
    "report_command",
    "write_report",
]
