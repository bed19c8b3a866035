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

The queries and the sections they fill are `deploy.report_queries`, the plotly figures
`deploy.report_figures`; this module writes the pages and is the command.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import plotly.io as pio
import plotly.offline
from rich.console import Console

from deploy.report_figures import figure
from deploy.report_queries import (
    AqiNow,
    ClusterPage,
    ClusterReport,
    KindHealth,
    Section,
    TimeRange,
    district_name,
    latest_data_end,
)
from sensors.aqi import BANDS
from sensors.cli import registry_from, registry_option
from sensors.errors import SmartcityError
from sensors.registry import Registry, SuperCluster
from sensors.timeparse import time_option
from storage.query import QueryClient
from storage.settings import InfluxSettings

DEFAULT_TZ = "Asia/Bangkok"
DEFAULT_SPAN = timedelta(hours=24)
PLOTLY_JS = "plotly.min.js"
NO_DATA = "No data in range · ไม่มีข้อมูลในช่วงเวลานี้"
POLLUTANT_LABELS = {"pm25": "PM2.5", "pm10": "PM10", "o3": "O₃", "co": "CO", "no2": "NO₂", "so2": "SO₂"}


class ReportError(SmartcityError):
    """The report cannot be made (no data, bad range); the message says what to do."""


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote."""

    index: Path
    pages: dict[str, Path]
    range: TimeRange
    generated: datetime


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


def aqi_card(item: AqiNow, registry: Registry, tz: tzinfo) -> str:
    name = html.escape(district_name(registry, item.district))
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
        f"<small>AQI{dominant} · {html.escape(item.time.astimezone(tz).strftime('%d %b %H:%M'))}</small></div>"
    )


def health_table(rows: Sequence[KindHealth]) -> str:
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


def section_lead(section: Section, registry: Registry, tz: tzinfo) -> str:
    """The markup shown before a section's charts."""
    if section.aqi_now is not None:
        cards = "".join(aqi_card(item, registry, tz) for item in section.aqi_now)
        return f'<div class="aqi-now">{cards}</div>{band_legend()}'
    if section.health is not None:
        return health_table(section.health)
    return ""


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
                figures[chart.id] = figure(chart, time_range.start, time_range.end, tz)
            cards.append(
                f'<figure class="card"><h3>{html.escape(chart.title)}</h3>'
                f'<p class="note">{html.escape(chart.note)}</p>{plot}</figure>'
            )
        parts.append(
            f'<section id="{html.escape(section.id)}"><h2>{html.escape(section.title)}</h2>'
            f"{section_lead(section, registry, tz)}"
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
            where = district_name(registry, worst.district)
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
            pages.append(ClusterReport(client, settings, registry, cluster, time_range, on_step).build())
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
