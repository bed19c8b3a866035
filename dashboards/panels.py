"""Panel builders and the grid layout the dashboards share (grafana-foundation-sdk builders).

Everything kind-specific comes in as data: units from the registry's metrics, colours and thresholds
from `sensors.aqi.BANDS` and the sites' thresholds, names from the registry's Thai and English names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import bargauge, geomap, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import geomap as gm

from dashboards.influxql import InfluxQLQuery, Target, datasource_ref
from sensors.aqi import BANDS
from sensors.registry import Metric, Threshold

GRID_WIDTH = 24
# Served by Grafana from its public/ folder; `dashboards build` writes it from the registry.
GAZETTEER_PATH = "public/gazetteer/smartcity.json"

# Registry units (SenML symbols) to Grafana unit ids; others are shown as a suffix.
GRAFANA_UNITS: Mapping[str, str] = {
    "ug/m3": "conμgm3",
    "ppb": "ppb",
    "ppm": "ppm",
    "Cel": "celsius",
    "%RH": "humidity",
    "%": "percent",
    "mm": "lengthmm",
    "m": "lengthm",
    "m/s": "velocityms",
    "km/h": "velocitykmh",
    "deg": "degree",
    "hPa": "pressurehpa",
    "dB": "dB",
    "count": "short",
    "kW": "kwatt",
    "kWh": "kwatth",
}

AnyPanel = cogbuilder.Builder[dm.Panel]


def grafana_unit(unit: str) -> str:
    return GRAFANA_UNITS.get(unit, f"suffix: {unit}")


def chart_unit(metric: Metric) -> str:
    """The unit of a metric's charts: its own, or per hour for a `sum` metric (`mm/h`; a count is `/h`)."""
    if metric.aggregate == "sum":
        return f"suffix: {'' if metric.unit == 'count' else metric.unit}/h"
    return grafana_unit(metric.unit)


def with_targets(panel: AnyPanel, queries: Sequence[InfluxQLQuery]) -> AnyPanel:
    for query in queries:
        panel.with_target(Target(query))  # type: ignore[attr-defined]
    return panel


def aqi_thresholds() -> db.ThresholdsConfig:
    """The PCD's official band colours, each from the band's lowest AQI."""
    steps = [dm.Threshold(None if band.aqi_min == 0 else float(band.aqi_min), band.colour) for band in BANDS]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def band_mappings() -> list[dm.ValueMapping]:
    """Band numbers 1-5 shown as their Thai and English labels in the band colour."""
    return [
        dm.ValueMap(
            options={
                str(band.number): dm.ValueMappingResult(
                    text=f"{band.label_en} / {band.label_th}", color=band.colour, index=band.number - 1
                )
                for band in BANDS
            }
        )
    ]


def band_step_thresholds(lower_bounds: Sequence[float]) -> db.ThresholdsConfig:
    """Band colours from a pollutant's band lower breakpoints (band 1 starts at -inf)."""
    steps = [dm.Threshold(None, BANDS[0].colour)]
    steps += [dm.Threshold(float(lo), band.colour) for lo, band in zip(lower_bounds, BANDS[1:], strict=True)]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def site_thresholds(threshold: Threshold) -> db.ThresholdsConfig:
    """Green below the warning line, orange from warning, red from danger (or the other way round
    for a metric where low is bad, i.e. danger below warning)."""
    if threshold.danger > threshold.warning:
        steps = [
            dm.Threshold(None, "green"),
            dm.Threshold(threshold.warning, "orange"),
            dm.Threshold(threshold.danger, "red"),
        ]
    else:
        steps = [
            dm.Threshold(None, "red"),
            dm.Threshold(threshold.danger, "orange"),
            dm.Threshold(threshold.warning, "green"),
        ]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def ratio_thresholds(bad: float, poor: float) -> db.ThresholdsConfig:
    """Red below `bad`, orange below `poor`, green above (for completeness-like ratios)."""
    steps = [dm.Threshold(None, "red"), dm.Threshold(bad, "orange"), dm.Threshold(poor, "green")]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def limit_thresholds(limit: float) -> db.ThresholdsConfig:
    """Green up to `limit`, red above."""
    steps = [dm.Threshold(None, "green"), dm.Threshold(limit, "red")]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def display_names(panel: AnyPanel, names: Mapping[str, str]) -> AnyPanel:
    """Show series named by an id (district, city) under the place's English and Thai name."""
    for key, name in names.items():
        panel.override_by_name(key, [dm.DynamicConfigValue("displayName", name)])  # type: ignore[attr-defined]
    return panel


def timeseries_panel(
    title: str,
    queries: Sequence[InfluxQLQuery],
    *,
    unit: str,
    description: str = "",
    min_interval_s: int | None = None,
    thresholds: db.ThresholdsConfig | None = None,
    threshold_style: cm.GraphThresholdsStyleMode | None = None,
) -> AnyPanel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .unit(unit)
        .line_width(1)
        .fill_opacity(5)
        .span_nulls(False)
        .show_points(cm.VisibilityMode.NEVER)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if min_interval_s is not None:
        panel.interval(f"{min_interval_s}s")
    if thresholds is not None:
        panel.thresholds(thresholds)
        panel.thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(threshold_style or cm.GraphThresholdsStyleMode.LINE)
        )
    return with_targets(panel, queries)


def stat_panel(
    title: str,
    queries: Sequence[InfluxQLQuery],
    *,
    unit: str = "short",
    description: str = "",
    thresholds: db.ThresholdsConfig | None = None,
    mappings: list[dm.ValueMapping] | None = None,
    decimals: int | None = None,
) -> AnyPanel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .unit(unit)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if thresholds is not None:
        panel.thresholds(thresholds)
    if mappings:
        panel.mappings(mappings)
    if decimals is not None:
        panel.decimals(decimals)
    return with_targets(panel, queries)


def bargauge_panel(
    title: str,
    queries: Sequence[InfluxQLQuery],
    *,
    unit: str = "short",
    description: str = "",
    thresholds: db.ThresholdsConfig | None = None,
    calc: str = "lastNotNull",
) -> AnyPanel:
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .unit(unit)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .reduce_options(cb.ReduceDataOptions().calcs([calc]).values(False))
    )
    if thresholds is not None:
        panel.thresholds(thresholds)
    return with_targets(panel, queries)


def table_panel(
    title: str,
    queries: Sequence[InfluxQLQuery],
    *,
    description: str = "",
    sort_by: str | None = None,
    descending: bool = False,
    overrides: Mapping[str, list[dm.DynamicConfigValue]] | None = None,
    keep_time: bool = False,
) -> AnyPanel:
    """A table of `table`-format queries merged on their tag columns (Grafana's `merge`); the Time column
    is hidden unless `keep_time` (aggregates over the range carry the range start there)."""
    panel = table.Panel().title(title).description(description).datasource(datasource_ref())
    panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    if not keep_time:
        panel.with_transformation(
            dm.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
        )
    if sort_by:
        panel.sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(descending)])
    for name, properties in (overrides or {}).items():
        panel.override_by_name(name, properties)
    return with_targets(panel, queries)


def geomap_panel(
    title: str,
    layers: Sequence[tuple[str, str, InfluxQLQuery, db.ThresholdsConfig]],
    *,
    description: str,
    centre: tuple[float, float],
    zoom: int,
) -> AnyPanel:
    """A map with one marker layer per (name, lookup tag, table query, colours); markers are placed
    by looking the tag value (a sensor or district id) up in the registry gazetteer."""
    panel = (
        geomap.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .view(geomap.MapViewConfig().id("coords").lat(centre[0]).lon(centre[1]).zoom(zoom))  # type: ignore[arg-type]
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True).show_scale(True))
        .basemap(cb.MapLayerOptions().type("default").name("Basemap"))
        .tooltip(geomap.TooltipOptions().mode(gm.TooltipMode.DETAILS))
    )
    map_layers: list[cogbuilder.Builder[cm.MapLayerOptions]] = []
    for name, lookup, query, _ in layers:
        field_name = query.alias or "value"
        map_layers.append(
            cb.MapLayerOptions()
            .type("markers")
            .name(name)
            .location(
                cb.FrameGeometrySource()
                .mode(cm.FrameGeometrySourceMode.LOOKUP)
                .lookup(lookup)
                .gazetteer(GAZETTEER_PATH)
            )
            .filter_data({"id": "byRefId", "options": query.ref_id})
            .config(
                {
                    "showLegend": True,
                    "style": {
                        "color": {"field": field_name, "fixed": "dark-green"},
                        "size": {"fixed": 7},
                        "opacity": 0.85,
                        "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
                    },
                }
            )
        )
        with_targets(panel, [query])
    panel.layers(map_layers)
    # Each layer colours its markers by its own field: the first layer's colours are the panel default,
    # the others' are overrides on their field.
    panel.thresholds(layers[0][3])
    for _, _, query, colours in layers[1:]:
        panel.override_by_name(query.alias, [dm.DynamicConfigValue("thresholds", colours.build())])
    panel.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
    return panel


@dataclass
class Layout:
    """Places panels left to right in rows of 24 grid units and numbers them; rows span the width.

    Panel ids are stable in generation order, so alert rules can link to them.
    """

    panels: list[dm.Panel | dm.RowPanel] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0
    _next_id: int = 1
    _open_row: dm.RowPanel | None = None

    def add(self, panel: AnyPanel, w: int, h: int) -> int:
        """Add a panel of `w` x `h` grid units; returns its id."""
        if self._x + w > GRID_WIDTH:
            self._newline()
        built = panel.build()
        built.id_val = self._take_id()
        built.grid_pos = dm.GridPos(h=h, w=w, x=self._x, y=self._y)
        self._x += w
        self._row_height = max(self._row_height, h)
        if self._open_row is not None:
            self._open_row.panels.append(built)
        else:
            self.panels.append(built)
        return built.id_val

    def row(self, title: str, *, collapsed: bool = False) -> None:
        """Start a row; the panels of a collapsed row live inside it and load only when opened."""
        self._newline()
        row = db.Row(title).collapsed(collapsed).build()
        row.id_val = self._take_id()
        row.grid_pos = dm.GridPos(h=1, w=GRID_WIDTH, x=0, y=self._y)
        self.panels.append(row)
        self._y += 1
        self._open_row = row if collapsed else None

    def _newline(self) -> None:
        self._y += self._row_height
        self._x = 0
        self._row_height = 0

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1
