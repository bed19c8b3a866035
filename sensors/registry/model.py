"""Typed models of the registry files (validated with pydantic; unknown keys are errors)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=63)]
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
Code = Annotated[str, Field(pattern=r"^[a-z]{2,4}$")]
SENSOR_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
SensorId = Annotated[str, Field(pattern=SENSOR_ID_PATTERN)]

# Measurement names the platform writes besides `{kind}`, `{kind}_1m` and `{kind}_1h`.
RESERVED_KIND_IDS = frozenset(
    {"aqi", "sensor_health", "ingest", "ingest_vendors", "ingest_rejects", "anomalies", "pipeline"}
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Names(Strict):
    en: str = Field(min_length=1)
    th: str = Field(min_length=1)


class Location(Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Threshold(Strict):
    """Alert levels of one metric at one site (e.g. flood warning and danger, in the metric's unit)."""

    warning: float
    danger: float

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        if self.warning == self.danger:
            raise ValueError("warning and danger must differ")
        return self


class Site(Strict):
    id: Slug
    name: str = Field(min_length=1)
    location: Location
    thresholds: dict[Identifier, Threshold] = {}


class District(Strict):
    id: Slug
    name: Names
    location: Location
    sites: list[Site] = Field(min_length=1)


class City(Strict):
    id: Slug
    code: Code
    name: Names
    districts: list[District] = Field(min_length=1)


class SuperCluster(Strict):
    id: Slug
    name: Names
    cities: list[City] = Field(min_length=1)


class Metric(Strict):
    name: Identifier
    unit: str = Field(min_length=1)
    min: float
    max: float
    required: bool = False
    description: str = Field(min_length=1)
    # How readings combine over time: `mean` for a level (temperature), `sum` for an amount since the
    # previous reading (rain, vehicles), which charts and reports show as a total per hour.
    aggregate: Literal["mean", "sum"] = "mean"

    @model_validator(mode="after")
    def _range(self) -> Metric:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class Kind(Strict):
    id: Identifier
    code: Code
    name: Names
    interval_s: int = Field(gt=0, le=86_400)
    metrics: list[Metric] = Field(min_length=1)
    # Metrics whose alert thresholds are set per site (every sensor's site must define them).
    site_thresholds: list[Identifier] = []

    @model_validator(mode="after")
    def _consistent(self) -> Kind:
        if self.id in RESERVED_KIND_IDS or self.id.endswith(("_1m", "_1h")):
            raise ValueError(f"kind id {self.id!r} is reserved for the platform's own measurements")
        names = [m.name for m in self.metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate metric {', '.join(duplicates)}")
        unknown = sorted(set(self.site_thresholds) - set(names))
        if unknown:
            raise ValueError(f"site_thresholds names unknown metric {', '.join(unknown)}")
        return self

    def metric(self, name: str) -> Metric | None:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        return None


class Vendor(Strict):
    id: Slug
    name: str = Field(min_length=1)
    payload: Literal["json", "senml"] = "json"


class FleetRule(Strict):
    city: Slug
    kind: Identifier
    count: int = Field(gt=0, le=100_000)
    vendors: list[Slug] = Field(min_length=1)
    sites: list[Slug] | None = None


class SensorSpec(Strict):
    id: SensorId
    kind: Identifier
    vendor: Slug
    site: Slug
    location: Location | None = None


class RegistryFile(Strict):
    """One YAML file of the registry; every section is optional so data can be split across files."""

    super_clusters: list[SuperCluster] = []
    kinds: list[Kind] = []
    vendors: list[Vendor] = []
    fleet: list[FleetRule] = []
    sensors: list[SensorSpec] = []
