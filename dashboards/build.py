"""The dashboards, generated from the registry: five per super-cluster and one Operations dashboard.

Per super-cluster folder ("Lanna · ล้านนา — Chiang Mai"): Overview, one dashboard per group of
kinds (`GROUPS`: Air quality, Flood & weather, Mobility & city services), one per kind that no group
lists, and Sensor health. Every kind with sensors in the super-cluster gets a row with one chart per
metric, a chart per site for metrics with site thresholds (drawn as the site's warning and danger
lines), and a collapsed row of per-sensor charts. A kind whose metrics are AQI pollutants also gets
the AQI section (`aqi_1h`, PCD colours). Nothing here names a kind: a new kind in the registry gets
its panels, in its own dashboard unless `GROUPS` lists it, with no code change.

This module decides which dashboards there are; each family is built in `dashboards/boards/`
(overview.py, kinds.py with the AQI section from air.py, health.py, operations.py) over the shared
frame in frame.py. Panels live in panels.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from dashboards.boards.health import sensor_health
from dashboards.boards.kinds import kinds_dashboard
from dashboards.boards.operations import operations_dashboard
from dashboards.boards.overview import overview
from dashboards.frame import ClusterView, GeneratedDashboard
from sensors.registry import Registry, SuperCluster


@dataclass(frozen=True)
class Group:
    """A dashboard that gathers several kinds (presentation data, not code per kind)."""

    slug: str
    title_en: str
    title_th: str
    kinds: tuple[str, ...]


GROUPS: tuple[Group, ...] = (
    Group("air-quality", "Air quality", "คุณภาพอากาศ", ("air_quality",)),
    Group("flood-weather", "Flood & weather", "น้ำท่วมและสภาพอากาศ", ("water_level", "weather")),
    Group(
        "mobility-services",
        "Mobility & city services",
        "การเดินทางและบริการเมือง",
        ("traffic", "parking", "noise", "waste_bin", "energy"),
    ),
)


def kind_slug(kind_id: str) -> str:
    return kind_id.replace("_", "-")


def cluster_dashboards(registry: Registry, cluster: SuperCluster) -> list[GeneratedDashboard]:
    """One super-cluster's dashboards: Overview, its groups of kinds, its ungrouped kinds, Sensor health."""
    view = ClusterView(registry, cluster)
    out = [overview(view)]
    grouped: set[str] = set()
    for group in GROUPS:
        kinds = [kind for kind in view.kinds if kind.id in group.kinds]
        grouped.update(group.kinds)
        if kinds:
            out.append(kinds_dashboard(view, group.slug, group.title_en, group.title_th, kinds))
    for kind in view.kinds:
        if kind.id not in grouped:
            out.append(kinds_dashboard(view, kind_slug(kind.id), kind.name.en, kind.name.th, [kind]))
    out.append(sensor_health(view))
    return out


def build_dashboards(registry: Registry) -> list[GeneratedDashboard]:
    """Every dashboard, in a stable order: each super-cluster's, then Operations."""
    out: list[GeneratedDashboard] = []
    for cluster in registry.super_clusters.values():
        out.extend(cluster_dashboards(registry, cluster))
    out.append(operations_dashboard())
    return out
