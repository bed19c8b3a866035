"""What every generated dashboard shares: uids and folders, the dashboard frame, and the result.

`ClusterView` is one super-cluster as its dashboards and the alert rules that link to them see it
(folder, sensors, the kinds present, place names, the scope filter, sites), and gives each of its
dashboards the same header, links and place variables. `GeneratedDashboard` is one finished
dashboard. The dashboards themselves are built in `dashboards/boards/`, put together by build.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import panels as p
from dashboards.influxql import datasource_ref, literal, quote, var_match
from sensors.registry import Kind, Registry, SuperCluster

TAG = "smartcity"


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


def to_model(dashboard: db.Dashboard, layout: p.Layout) -> dict[str, Any]:
    built = dashboard.build()
    built.panels = layout.panels
    # The SDK's encoder turns its models into plain JSON data.
    model: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
    return model


class ClusterView:
    """One super-cluster as its dashboards see it, and the frame each of them shares."""

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

    def sites_of(self, kind: Kind) -> list[tuple[str, list[str]]]:
        """Sites of this super-cluster with sensors of `kind`, and those sensors, in registry order."""
        by_site: dict[str, list[str]] = {}
        for sensor in self.sensors:
            if sensor.kind == kind.id:
                by_site.setdefault(sensor.site, []).append(sensor.id)
        return [(site, by_site[site]) for site in self.registry.sites if site in by_site]

    def generated(self, slug: str, dashboard: db.Dashboard, layout: p.Layout) -> GeneratedDashboard:
        uid = dashboard_uid(self.cluster.id, slug)
        return GeneratedDashboard(
            self.folder, folder_uid(self.cluster.id), f"{slug}.json", uid, to_model(dashboard, layout)
        )


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
