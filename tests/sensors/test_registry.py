"""The registry is data: it loads, cross-checks, expands the fleet and reports broken files as file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensors.registry import BUILTIN_DIR, RegistryError, default_registry, load_registry
from sensors.registry.scaled import write_scaled_registry

NEW_KIND = """
kinds:
  - id: river_flow
    code: rf
    name: {en: River flow, th: อัตราการไหล}
    interval_s: 300
    metrics:
      - {name: discharge, unit: m3/s, min: 0, max: 5000, required: true, description: River discharge}
vendors:
  - {id: flowtech, name: FlowTech, payload: senml}
fleet:
  - {city: chiang-mai, kind: river_flow, count: 4, vendors: [flowtech], sites: [nawarat-bridge, ping-saraphi]}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_registry_covers_both_pilot_cities() -> None:
    registry = default_registry()
    assert set(registry.super_clusters) == {"andaman", "lanna"}
    assert registry.super_cluster_of_city == {"phuket": "andaman", "chiang-mai": "lanna"}
    assert {"mueang-phuket", "kathu", "thalang"} <= set(registry.districts)
    assert {"mueang-chiang-mai", "hang-dong", "san-sai", "mae-rim", "saraphi", "san-kamphaeng"} <= set(
        registry.districts
    )
    assert registry.super_clusters["lanna"].name.th == "ล้านนา"
    assert len(registry.sensors) >= 600
    kinds = {"air_quality", "weather", "water_level", "traffic", "noise", "parking", "waste_bin", "energy"}
    assert kinds <= set(registry.kinds)
    assert {m.name for m in registry.kinds["air_quality"].metrics} == {"pm25", "pm10", "o3", "co", "no2", "so2"}
    for city in ("phuket", "chiang-mai"):
        assert {s.kind for s in registry.sensors_of(city=city)} == kinds


def test_fleet_is_deterministic_and_consistent() -> None:
    first, second = load_registry(), load_registry()
    assert first.sensors == second.sensors
    registry = first
    for sensor in registry.sensors.values():
        assert registry.district_of_site[sensor.site] == sensor.district
        assert registry.city_of_district[sensor.district] == sensor.city
        assert sensor.vendor in registry.vendors
        assert abs(sensor.lat - registry.sites[sensor.site].location.lat) < 0.01
        assert sensor.topic == f"smartcity/v1/{sensor.city}/{sensor.kind}/{sensor.id}"
    # Flood gauges only stand where the site defines warning and danger levels.
    for sensor in registry.sensors_of(kind="water_level"):
        assert registry.threshold(sensor.site, "level") is not None


def test_the_fleet_times_n_keeps_the_pilot_sensors_where_they_are(tmp_path: Path) -> None:
    """Fleet-scale tests compare a pilot sensor in the scaled fleet with itself in the pilot fleet."""
    pilot = default_registry()
    scaled = write_scaled_registry(tmp_path / "x3", 3)
    assert len(scaled.sensors) == 3 * len(pilot.sensors)
    assert (scaled.kinds.keys(), scaled.sites.keys()) == (pilot.kinds.keys(), pilot.sites.keys())
    assert all(scaled.sensors[s.id] == s for s in pilot.sensors.values())
    for kind in pilot.kinds:
        assert len(scaled.sensors_of(kind=kind)) == 3 * len(pilot.sensors_of(kind=kind)), kind


def test_an_extra_file_adds_a_kind_without_code(tmp_path: Path) -> None:
    registry = load_registry([BUILTIN_DIR, write(tmp_path, "river.yaml", NEW_KIND)])
    flows = registry.sensors_of(kind="river_flow")
    assert [s.id for s in flows] == ["cnx-rf-001", "cnx-rf-002", "cnx-rf-003", "cnx-rf-004"]
    assert {s.site for s in flows} == {"nawarat-bridge", "ping-saraphi"}
    assert registry.kinds["river_flow"].metric("discharge") is not None


def test_amounts_since_the_previous_reading_aggregate_as_sums() -> None:
    registry = default_registry()
    sums = {(kind.id, m.name) for kind in registry.kinds.values() for m in kind.metrics if m.aggregate == "sum"}
    assert sums == {("weather", "rainfall"), ("traffic", "vehicle_count")}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("kinds: [\n  {id: x\n", 3, "invalid YAML"),
        ("vendors:\n  - {id: acme, name: Acme, payload: xml}\n", 2, "vendors.0.payload"),
        ("vendors:\n  - {id: acme, name: Acme}\n  - {id: acme, name: Acme 2}\n", 3, "duplicate vendor id 'acme'"),
        ("fleet:\n  - {city: bangkok, kind: noise, count: 1, vendors: [sonic-city]}\n", 2, "unknown city 'bangkok'"),
        ("fleet:\n  - {city: phuket, kind: noise, count: 1, vendors: [nobody]}\n", 2, "unknown vendor 'nobody'"),
        (
            "kinds:\n  - id: noise2\n    code: nq\n    name: {en: a, th: b}\n    interval_s: 60\n    metrics:\n"
            "      - {name: laeq, unit: dB, min: 90, max: 20, description: d}\n",
            7,
            "min (90.0) must be below max",
        ),
        (
            "fleet:\n  - {city: phuket, kind: water_level, count: 1, vendors: [binwise], sites: [old-town]}\n",
            2,
            "has no thresholds for level",
        ),
        (
            "kinds:\n  - id: ingest\n    code: ig\n    name: {en: a, th: b}\n    interval_s: 60\n    metrics:\n"
            "      - {name: x, unit: m, min: 0, max: 1, description: d}\n",
            2,
            "reserved",
        ),
        (
            "kinds:\n  - id: noise2\n    code: nq\n    name: {en: a, th: b}\n    interval_s: 60\n    metrics:\n"
            "      - {name: laeq, unit: dB, min: 20, max: 90, aggregate: max, description: d}\n",
            7,
            "kinds.0.metrics.0.aggregate",
        ),
        ("sensors:\n  - {id: Bad_Id, kind: noise, vendor: sonic-city, site: old-town}\n", 2, "sensors.0.id"),
        ("vendors: {a: 1}\nvendors: []\n", 2, "duplicate key 'vendors'"),
        ("unknown_section: []\n", 1, "unknown_section: Extra inputs are not permitted"),
    ],
)
def test_broken_registry_reports_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    extra = write(tmp_path, "broken.yaml", text)
    with pytest.raises(RegistryError) as err:
        load_registry([BUILTIN_DIR, extra])
    assert str(err.value).startswith(f"{extra}:{line}: "), str(err.value)
    assert message in str(err.value)


def test_broken_registry_on_the_command_line_is_one_line_exit_1(tmp_path: Path) -> None:
    extra = write(tmp_path, "broken.yaml", "vendors:\n  - {id: acme, name: Acme, payload: xml}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "sensors",
            "list",
            "--registry",
            str(BUILTIN_DIR),
            "--registry",
            str(extra),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"smartcity: error: {extra}:2: vendors.0.payload: Input should be 'json' or 'senml'"
    ]
