"""The generated dashboards, alert rules and provisioning files: valid, linked, data-driven, unchanged.

Golden files: the committed `deploy/grafana/` output is the snapshot. After an intended change,
regenerate it with `smartcity dashboards build` (default `--out deploy/grafana`) and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dashboards.boards.operations import OPERATIONS_FOLDER
from dashboards.frame import all_panels
from dashboards.influxql import DATASOURCE_UID, tier_bounds
from dashboards.provisioning import (
    DEFAULT_OUT,
    MARKER,
    Provisioning,
    datasource,
    env_ref,
    escape_env,
    generate,
    rendered_files,
)
from deploy.cli import main
from sensors.registry import BUILTIN_DIR, default_registry, load_registry

REPO = Path(__file__).resolve().parents[2]
GRID = 24


@pytest.fixture(scope="module")
def provisioning() -> Provisioning:
    return generate(default_registry())


def datasource_refs(node: object) -> list[dict[str, str]]:
    """Every `datasource` object anywhere in a dashboard model."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            found.append(node["datasource"])
        for value in node.values():
            found += datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            found += datasource_refs(value)
    return found


def test_dashboards_are_valid_grafana_models(provisioning: Provisioning) -> None:
    uids = [d.uid for d in provisioning.dashboards]
    assert len(uids) == len(set(uids)) and all(len(uid) <= 40 for uid in uids)
    provisioned = {ds["uid"] for ds in datasource()["datasources"]}
    for dashboard in provisioning.dashboards:
        model = dashboard.model
        assert model["uid"] == dashboard.uid and model["schemaVersion"] >= 39
        panels = all_panels(model)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), dashboard.uid
        for ref in datasource_refs(model):
            assert ref["uid"] in provisioned | {"__expr__"}, (dashboard.uid, ref)
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            pos = panel["gridPos"]
            assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= GRID, panel["title"]
            area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not area & cells, f"{dashboard.uid}: {panel['title']} overlaps another panel"
            cells |= area
            for target in panel.get("targets", []):
                assert target["rawQuery"] and target["query"].startswith("SELECT"), panel["title"]


def test_every_super_cluster_has_its_folder_and_dashboards(provisioning: Provisioning) -> None:
    by_folder: dict[str, list[str]] = {}
    for d in provisioning.dashboards:
        by_folder.setdefault(d.folder, []).append(d.uid)
    assert by_folder["Lanna · ล้านนา — Chiang Mai"] == [
        f"smartcity-lanna-{slug}"
        for slug in ("overview", "air-quality", "flood-weather", "mobility-services", "sensor-health")
    ]
    assert "Andaman · อันดามัน — Phuket" in by_folder
    assert by_folder[OPERATIONS_FOLDER] == ["smartcity-operations"]


def test_alert_rules_have_stable_uids_and_link_to_existing_panels(provisioning: Provisioning) -> None:
    panels = {d.uid: {p["id"]: p for p in all_panels(d.model)} for d in provisioning.dashboards}
    rules = [rule for group in provisioning.rule_groups for rule in group.rules]
    uids = [rule.uid for rule in rules]
    assert len(uids) == len(set(uids)) and all(len(uid) <= 40 for uid in uids)
    for rule in rules:
        assert rule.panel_id in panels[rule.dashboard_uid], rule.uid
    assert {
        "lanna-aqi-band-4",
        "andaman-bang-yai-canal-level-danger",
        "lanna-silent-air-quality",
        "ops-reject-ratio",
        "ops-ingest-lag",
    } <= set(uids)
    danger = next(r for r in rules if r.uid == "andaman-bang-yai-canal-level-danger")
    assert danger.threshold == 2.2 and danger.evaluator == "gt"  # places.yaml: bang-yai-canal danger 2.2 m


def test_flood_panels_draw_each_sites_lines_from_the_registry(provisioning: Provisioning) -> None:
    flood = next(d for d in provisioning.dashboards if d.uid == "smartcity-lanna-flood-weather")
    panel = next(p for p in all_panels(flood.model) if p["title"] == "Flood water level at Ping River at Mae Rim")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 3.2, 3.9]


def test_aqi_panels_use_the_official_band_colours(provisioning: Provisioning) -> None:
    air = next(d for d in provisioning.dashboards if d.uid == "smartcity-lanna-air-quality")
    panel = next(p for p in all_panels(air.model) if p["title"] == "AQI now by district")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [
        (None, "#00BFF3"),
        (26, "#00A651"),
        (51, "#FDC04E"),
        (101, "#F26522"),
        (201, "#CD0000"),
    ]


def test_alerting_yaml_writes_templates_raw_and_escapes_only_expanded_fields() -> None:
    """Grafana reads annotations and query models raw, and expands `$` everywhere else (rules_types.go)."""
    data = yaml.safe_load(rendered_files(generate(default_registry()))[Path("provisioning/alerting/smartcity.yaml")])
    assert data["apiVersion"] == 1
    assert data["contactPoints"][0]["receivers"][0]["settings"]["url"] == "${SMARTCITY_ALERT_WEBHOOK_URL}"
    rules = [r for g in data["groups"] for r in g["rules"]]
    summaries = [r["annotations"]["summary"] for r in rules]
    assert any("{{ $labels." in s for s in summaries) and not any("$$" in s for s in summaries)
    aliases = [q["model"].get("alias", "") for r in rules for q in r["data"]]
    assert "$tag_sensor_id" in aliases and not any("$$" in a for a in aliases)


def test_expanded_fields_double_a_literal_dollar() -> None:
    node = {"title": "costs $5", "annotations": {"summary": "{{ $labels.x }}"}, "data": [{"model": {"q": "/^a$/"}}]}
    assert escape_env(node) == {
        "title": "costs $$5",
        "annotations": {"summary": "{{ $labels.x }}"},
        "data": [{"model": {"q": "/^a$/"}}],
    }
    assert escape_env(env_ref("X")) == "${X}"


def test_provisioning_folder_holds_only_generated_files() -> None:
    """Grafana loads every file under provisioning/: hand-written samples there would be live config."""
    folder = REPO / DEFAULT_OUT / "provisioning"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert files and all(MARKER in p.read_text("utf-8") for p in files), files


def test_committed_provisioning_matches_the_generator() -> None:
    """Golden snapshot: regenerate with `smartcity dashboards build` after an intended change."""
    files = rendered_files(generate(default_registry()))
    stale = [str(path) for path, content in files.items() if (REPO / DEFAULT_OUT / path).read_text("utf-8") != content]
    assert stale == [], "run 'smartcity dashboards build' and commit deploy/grafana"
    committed = {p.relative_to(REPO / DEFAULT_OUT) for p in (REPO / DEFAULT_OUT / "dashboards").rglob("*.json")}
    assert committed == {p for p in files if p.parts[0] == "dashboards"}


EXTRA_KIND = """
kinds:
  - id: soil_moisture
    code: sm
    name: {en: Soil moisture, th: ความชื้นในดิน}
    interval_s: 300
    metrics:
      - {name: vwc, unit: "%", min: 0, max: 100, required: true, description: Volumetric water content}
      - {name: soil_temperature, unit: Cel, min: -10, max: 60, description: Soil temperature}
fleet:
  - {city: chiang-mai, kind: soil_moisture, count: 4, vendors: [lanna-envirotech]}
"""


def test_a_new_registry_kind_gets_its_panels_and_alerts(tmp_path: Path) -> None:
    extra = tmp_path / "soil.yaml"
    extra.write_text(EXTRA_KIND, encoding="utf-8")
    provisioning = generate(load_registry([BUILTIN_DIR, extra]))
    soil = next(d for d in provisioning.dashboards if d.uid == "smartcity-lanna-soil-moisture")
    queries = [t["query"] for p in all_panels(soil.model) for t in p.get("targets", [])]
    for metric in ("vwc", "soil_temperature"):
        assert any('"raw"."soil_moisture"' in q and f'("{metric}")' in q for q in queries)
        assert any('"rollup"."soil_moisture_1m"' in q and f'"{metric}_mean"' in q for q in queries)
        assert any('"rollup"."soil_moisture_1h"' in q and f'"{metric}_mean"' in q for q in queries)
    assert any(r.uid == "lanna-silent-soil-moisture" for g in provisioning.rule_groups for r in g.rules)
    assert not any(d.uid == "smartcity-andaman-soil-moisture" for d in provisioning.dashboards)  # no sensors there


@given(
    st.integers(min_value=1, max_value=86_400),
    st.integers(min_value=1, max_value=10**9),
    st.sampled_from(["sensor", "district", "city"]),
)
def test_exactly_one_tier_matches_any_interval(interval_s: int, interval_ms: int, level: str) -> None:
    def matches(lo: int | None, hi: int | None) -> bool:
        return (lo is None or interval_ms > lo) and (hi is None or interval_ms <= hi)

    assert sum(matches(t.lo_ms, t.hi_ms) for t in tier_bounds(interval_s, level)) == 1


def test_build_command_writes_marked_files_and_removes_stale_ones(tmp_path: Path) -> None:
    out = tmp_path / "grafana"
    stale = out / "dashboards" / "Old folder" / "gone.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"__generated": MARKER}))
    mine = out / "dashboards" / "mine.json"
    mine.write_text("{}")
    assert main(["dashboards", "build", "--out", str(out)]) == 0
    assert not stale.exists() and not stale.parent.exists() and mine.exists()
    overview = json.loads((out / "dashboards/Lanna · ล้านนา — Chiang Mai/overview.json").read_text("utf-8"))
    assert overview["__generated"] == MARKER and overview["uid"] == "smartcity-lanna-overview"
    provider = yaml.safe_load((out / "provisioning/dashboards/smartcity.yaml").read_text("utf-8"))
    assert provider["providers"][0]["options"]["foldersFromFilesStructure"] is True
    ds = yaml.safe_load((out / "provisioning/datasources/smartcity.yaml").read_text("utf-8"))["datasources"][0]
    assert ds["uid"] == DATASOURCE_UID and ds["secureJsonData"]["password"].startswith("${")
    gazetteer = json.loads((out / "gazetteer/smartcity.json").read_text("utf-8"))
    assert {"pkt-aq-001", "mueang-chiang-mai"} <= {p["key"] for p in gazetteer}


def test_build_reports_an_unwritable_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["dashboards", "build", "--out", str(blocker / "sub")]) == 1
    assert "cannot write Grafana provisioning" in capsys.readouterr().err
