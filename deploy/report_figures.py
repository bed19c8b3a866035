"""The report's charts: lines by district or gauge over time (or bars), as plotly figures (data + layout).

A `Chart` is what `deploy.report_queries` fills from InfluxDB; `figure` turns it into the dict plotly.js
draws, with the PCD band colours behind pollutants and AQI and dashed lines for site thresholds.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from sensors.aqi import BANDS, POLLUTANTS
from sensors.registry import Metric

# SenML unit symbols as people read them; anything else is shown as written in the registry.
UNIT_LABELS = {"ug/m3": "µg/m³", "Cel": "°C", "%RH": "% RH", "deg": "°", "count": ""}


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


def figure(chart: Chart, start: datetime, end: datetime, tz: tzinfo) -> dict[str, Any]:
    """The plotly figure (data + layout) of a chart; a time axis spans [start, end)."""
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
        xaxis.update(type="date", range=[_local(start, tz), _local(end, tz)])
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
