"""The sensor registry: places, sensor kinds and metrics, vendors and the fleet, as YAML data.

The built-in registry is the `*.yaml` files next to this module. Users point
`load_registry()` at their own files or folders; sections of several files are
concatenated, so an extra file can add a kind, vendors and fleet rules without
touching the others. Everything downstream (payload validation, broker ACLs,
rollups, dashboards, alert rules, the simulator) is derived from it, so adding
a kind or a metric is a data edit only.

A broken file is reported as `file:line: what is wrong` (`RegistryError`).
`sensors.registry.scaled` writes the pilot fleet times N (capacity runs, fleet-scale tests).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

from sensors.errors import SmartcityError
from sensors.reading import Reading
from sensors.registry.model import (
    City,
    District,
    Kind,
    Location,
    Metric,
    RegistryFile,
    SensorSpec,
    Site,
    SuperCluster,
    Threshold,
    Vendor,
)

BUILTIN_DIR = Path(__file__).parent

__all__ = [
    "BUILTIN_DIR",
    "City",
    "District",
    "Kind",
    "Location",
    "Metric",
    "Registry",
    "RegistryError",
    "Sensor",
    "Site",
    "SuperCluster",
    "Threshold",
    "Vendor",
    "default_registry",
    "load_registry",
]


class RegistryError(SmartcityError):
    """A registry file that does not parse or validate; the message starts with `file:line:`."""


@dataclass(frozen=True)
class Sensor:
    """One sensor of the fleet, with the places that enclose it."""

    id: str
    kind: str
    vendor: str
    super_cluster: str
    city: str
    district: str
    site: str
    lat: float
    lon: float

    @property
    def topic(self) -> str:
        return f"smartcity/v1/{self.city}/{self.kind}/{self.id}"

    def reading(self, ts: int, values: dict[str, float], seq: int | None = None, received: int = 0) -> Reading:
        """A reading of this sensor, carrying the places it was validated against."""
        return Reading(
            sensor_id=self.id,
            kind=self.kind,
            ts=ts,
            values=values,
            vendor=self.vendor,
            super_cluster=self.super_cluster,
            city=self.city,
            district=self.district,
            site=self.site,
            seq=seq,
            received=received,
        )


Path_ = tuple[str | int, ...]


@dataclass
class _Source:
    """Where each element of the merged data came from, for `file:line` messages."""

    lines: dict[Path_, tuple[Path, int]]

    def where(self, path: Path_) -> str:
        while path and path not in self.lines:
            path = path[:-1]
        file, line = self.lines.get(path, (Path("?"), 0))
        return f"{file}:{line}"


def _load_yaml(file: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML keeping the line of every node (keyed by its path from the root)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RegistryError(f"{file}:0: cannot read: {err}") from err
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines: dict[Path_, int] = {}

        def walk(node: yaml.Node, path: Path_) -> Any:
            lines[path] = node.start_mark.line + 1
            if isinstance(node, yaml.MappingNode):
                mapping: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    key = loader.construct_object(key_node)
                    if key in mapping:
                        raise RegistryError(f"{file}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
                    mapping[key] = walk(value_node, (*path, key))
                return mapping
            if isinstance(node, yaml.SequenceNode):
                return [walk(item, (*path, i)) for i, item in enumerate(node.value)]
            return loader.construct_object(node)

        data = walk(root, ()) if root is not None else {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        raise RegistryError(f"{file}:{line}: invalid YAML: {err.problem or err.context}") from err
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise RegistryError(
            f"{file}:1: expected a mapping of sections (super_clusters, kinds, vendors, fleet, sensors)"
        )
    return data, lines


def _registry_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"}))
        elif path.is_file():
            files.append(path)
        else:
            raise RegistryError(f"{path}:0: no such registry file or folder")
    return files


def _validate_file(file: Path, data: dict[Any, Any], lines: dict[Path_, int]) -> RegistryFile:
    try:
        return RegistryFile.model_validate(data)
    except pydantic.ValidationError as err:
        problems = []
        for error in err.errors():
            loc = tuple(error["loc"])
            path = loc
            while path and path not in lines:
                path = path[:-1]
            where = ".".join(str(p) for p in loc)
            problems.append(f"{file}:{lines.get(path, 1)}: {where}: {error['msg']}")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RegistryError(problems[0] + more) from None


def _jitter(sensor_id: str, scale: float = 0.002) -> tuple[float, float]:
    """A small deterministic offset so sensors of one site do not sit on one point of the map."""
    digest = hashlib.sha256(sensor_id.encode()).digest()
    return ((digest[0] / 255 - 0.5) * 2 * scale, (digest[1] / 255 - 0.5) * 2 * scale)


class Registry:
    """The merged, validated and cross-checked registry, with the fleet expanded into sensors."""

    def __init__(self, files: Sequence[tuple[Path, RegistryFile, dict[Path_, int]]]) -> None:
        self.files = [file for file, _, _ in files]
        self.super_clusters: dict[str, SuperCluster] = {}
        self.cities: dict[str, City] = {}
        self.districts: dict[str, District] = {}
        self.sites: dict[str, Site] = {}
        self.kinds: dict[str, Kind] = {}
        self.vendors: dict[str, Vendor] = {}
        self.sensors: dict[str, Sensor] = {}
        # Enclosing places of each city, district and site.
        self.city_of_district: dict[str, str] = {}
        self.district_of_site: dict[str, str] = {}
        self.super_cluster_of_city: dict[str, str] = {}
        self._build(files)

    # -- construction -----------------------------------------------------------------

    def _build(self, files: Sequence[tuple[Path, RegistryFile, dict[Path_, int]]]) -> None:
        def at(file: Path, lines: dict[Path_, int], path: Path_) -> str:
            return _Source({k: (file, v) for k, v in lines.items()}).where(path)

        def claim(table: dict[str, Any], key: str, value: Any, what: str, where: str) -> None:
            if key in table:
                raise RegistryError(f"{where}: duplicate {what} id {key!r}")
            table[key] = value

        for file, data, lines in files:
            for i, cluster in enumerate(data.super_clusters):
                claim(self.super_clusters, cluster.id, cluster, "super-cluster", at(file, lines, ("super_clusters", i)))
                for j, city in enumerate(cluster.cities):
                    city_path: Path_ = ("super_clusters", i, "cities", j)
                    claim(self.cities, city.id, city, "city", at(file, lines, city_path))
                    if any(c.code == city.code for c in self.cities.values() if c is not city):
                        raise RegistryError(f"{at(file, lines, city_path)}: duplicate city code {city.code!r}")
                    self.super_cluster_of_city[city.id] = cluster.id
                    for k, district in enumerate(city.districts):
                        district_path: Path_ = (*city_path, "districts", k)
                        claim(self.districts, district.id, district, "district", at(file, lines, district_path))
                        self.city_of_district[district.id] = city.id
                        for m, site in enumerate(district.sites):
                            site_path: Path_ = (*district_path, "sites", m)
                            claim(self.sites, site.id, site, "site", at(file, lines, site_path))
                            self.district_of_site[site.id] = district.id
            for i, kind in enumerate(data.kinds):
                where = at(file, lines, ("kinds", i))
                claim(self.kinds, kind.id, kind, "kind", where)
                if any(k.code == kind.code for k in self.kinds.values() if k is not kind):
                    raise RegistryError(f"{where}: duplicate kind code {kind.code!r}")
            for i, vendor in enumerate(data.vendors):
                claim(self.vendors, vendor.id, vendor, "vendor", at(file, lines, ("vendors", i)))

        # Fleet rules and explicit sensors refer to places, kinds and vendors of any file.
        counters: dict[tuple[str, str], int] = {}
        for file, data, lines in files:
            for i, rule in enumerate(data.fleet):
                where = at(file, lines, ("fleet", i))
                kind = self._known(self.kinds, rule.kind, "kind", where)
                city = self._known(self.cities, rule.city, "city", where)
                for vendor_id in rule.vendors:
                    self._known(self.vendors, vendor_id, "vendor", where)
                city_sites = [s.id for d in city.districts for s in d.sites]
                if rule.sites is not None:
                    for site_id in rule.sites:
                        if site_id not in city_sites:
                            raise RegistryError(f"{where}: site {site_id!r} is not in city {city.id!r}")
                    eligible = list(rule.sites)
                else:
                    eligible = [s for s in city_sites if self._has_thresholds(kind, s)]
                if not eligible:
                    raise RegistryError(
                        f"{where}: no site of {city.id!r} has the thresholds {kind.id!r} needs "
                        f"({', '.join(kind.site_thresholds)})"
                    )
                for _ in range(rule.count):
                    n = counters.get((city.id, kind.id), 0) + 1
                    counters[(city.id, kind.id)] = n
                    spec = SensorSpec(
                        id=f"{city.code}-{kind.code}-{n:03d}",
                        kind=kind.id,
                        vendor=rule.vendors[(n - 1) % len(rule.vendors)],
                        site=eligible[(n - 1) % len(eligible)],
                    )
                    self._add_sensor(spec, where)
            for i, spec in enumerate(data.sensors):
                where = at(file, lines, ("sensors", i))
                self._known(self.kinds, spec.kind, "kind", where)
                self._known(self.vendors, spec.vendor, "vendor", where)
                self._add_sensor(spec, where)

    @staticmethod
    def _known(table: dict[str, Any], key: str, what: str, where: str) -> Any:
        if key not in table:
            known = ", ".join(sorted(table)) or "none defined"
            raise RegistryError(f"{where}: unknown {what} {key!r} (known: {known})")
        return table[key]

    def _has_thresholds(self, kind: Kind, site_id: str) -> bool:
        return all(metric in self.sites[site_id].thresholds for metric in kind.site_thresholds)

    def _add_sensor(self, spec: SensorSpec, where: str) -> None:
        site = self._known(self.sites, spec.site, "site", where)
        kind = self.kinds[spec.kind]
        if not self._has_thresholds(kind, spec.site):
            raise RegistryError(
                f"{where}: {spec.id}: site {spec.site!r} has no thresholds for {', '.join(kind.site_thresholds)}, "
                f"which kind {kind.id!r} needs"
            )
        if spec.id in self.sensors:
            raise RegistryError(f"{where}: duplicate sensor id {spec.id!r}")
        district = self.district_of_site[spec.site]
        city = self.city_of_district[district]
        if spec.location is not None:
            lat, lon = spec.location.lat, spec.location.lon
        else:
            dlat, dlon = _jitter(spec.id)
            lat, lon = round(site.location.lat + dlat, 5), round(site.location.lon + dlon, 5)
        self.sensors[spec.id] = Sensor(
            id=spec.id,
            kind=spec.kind,
            vendor=spec.vendor,
            super_cluster=self.super_cluster_of_city[city],
            city=city,
            district=district,
            site=spec.site,
            lat=lat,
            lon=lon,
        )

    # -- queries ------------------------------------------------------------------------

    def sensors_of(
        self, *, city: str | None = None, kind: str | None = None, vendor: str | None = None
    ) -> list[Sensor]:
        return [
            s
            for s in self.sensors.values()
            if (city is None or s.city == city)
            and (kind is None or s.kind == kind)
            and (vendor is None or s.vendor == vendor)
        ]

    def threshold(self, site_id: str, metric: str) -> Threshold | None:
        return self.sites[site_id].thresholds.get(metric)


def load_registry(paths: Sequence[Path] | None = None) -> Registry:
    """Load, validate and cross-check the registry from files and folders (default: the built-in one)."""
    files = _registry_files(paths if paths else [BUILTIN_DIR])
    if not files:
        raise RegistryError(f"{paths[0] if paths else BUILTIN_DIR}:0: no registry files (*.yaml) found")
    parsed = []
    for file in files:
        data, lines = _load_yaml(file)
        parsed.append((file, _validate_file(file, data, lines), lines))
    registry = Registry(parsed)
    if not registry.kinds:
        raise RegistryError(f"{files[0]}:1: the registry defines no sensor kinds")
    return registry


@functools.cache
def default_registry() -> Registry:
    """The built-in registry, loaded once per process."""
    return load_registry()
