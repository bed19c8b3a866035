"""The committed `deploy/grafana/` passes the checks Grafana itself runs when it loads provisioning.

No Grafana binary runs here, so each test re-states one rule read from Grafana's source (file and
function named in the test) and runs it over what Grafana would load: every file in the mounted
`provisioning/` folders, every dashboard JSON under the provider's path. Each rule is also run on a
broken input (the defects this suite was written for), so a rule that cannot fail is caught.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.frame import folder_uid
from dashboards.provisioning import CONTAINER_DASHBOARDS, DEFAULT_OUT, escape_env
from sensors.registry import default_registry

GRAFANA = Path(__file__).resolve().parents[2] / DEFAULT_OUT
PROVISIONING = GRAFANA / "provisioning"
# util.IsValidShortUID / ValidateUID (pkg/util/shortid_generator.go) and the 40-character column.
SHORT_UID = re.compile(r"^[a-zA-Z0-9\-_]{1,40}$")
EXPRESSION_UID = "__expr__"


def load_folder(kind: str, root: Path = PROVISIONING) -> list[dict[str, Any]]:
    """Every YAML file of one provisioning folder, as Grafana's config readers take them (all files)."""
    folder = root / kind
    return [yaml.safe_load(path.read_text("utf-8")) for path in sorted(folder.iterdir()) if path.is_file()]


def all_files_are_yaml(root: Path = PROVISIONING) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix not in (".yaml", ".yml", ".json")]


# ---- datasources -------------------------------------------------------------------------------


def default_datasource_violations(configs: list[dict[str, Any]]) -> list[int]:
    """validateDefaultUniqueness (pkg/services/provisioning/datasources/config_reader.go): more than one
    `isDefault` datasource in an org (orgId 0 counts as 1) stops provisioning with
    "Only one datasource per organization can be marked as default"."""
    defaults = Counter(
        ds.get("orgId") or 1 for config in configs for ds in config.get("datasources") or [] if ds.get("isDefault")
    )
    return [org for org, count in defaults.items() if count > 1]


def test_at_most_one_default_datasource_per_org() -> None:
    configs = load_folder("datasources")
    assert default_datasource_violations(configs) == []
    assert default_datasource_violations(configs + configs) == [1]  # the old sample.yaml next to it


def test_every_datasource_has_a_valid_uid_name_and_type() -> None:
    datasources = [ds for config in load_folder("datasources") for ds in config["datasources"]]
    names = [ds["name"] for ds in datasources]
    assert len(names) == len(set(names))
    for ds in datasources:
        assert SHORT_UID.match(ds["uid"]) and ds["type"] and ds["access"] in ("proxy", "direct"), ds


# ---- dashboards --------------------------------------------------------------------------------


def provider_violations(
    configs: list[dict[str, Any]], dashboards_by_path: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """duplicateValidator.getDuplicates (pkg/services/provisioning/dashboards/validator.go) counts each
    dashboard uid, and each title per folder, across ALL file providers; a uid used more than once makes
    the providers involved stop saving (the dashboards disappear or freeze). Two providers over one
    path always collide. Provider names must be unique too (config_reader.go, readConfig)."""
    providers = [p for config in configs for p in config.get("providers") or []]
    problems = [f"provider name {n!r} used twice" for n, c in Counter(p["name"] for p in providers).items() if c > 1]
    uids: Counter[str] = Counter()
    titles: Counter[tuple[str, str]] = Counter()
    for provider in providers:
        for model in dashboards_by_path[provider["options"]["path"]]:
            uids[model["uid"]] += 1
            titles[(model["__folder"], model["title"])] += 1
    problems += [f"dashboard uid {uid!r} provisioned {n} times" for uid, n in uids.items() if n > 1]
    problems += [f"dashboard title {t!r} in folder {f!r} {n} times" for (f, t), n in titles.items() if n > 1]
    return problems


def mounted_dashboards() -> dict[str, list[dict[str, Any]]]:
    """What a file provider with foldersFromFilesStructure reads under the container path."""
    models = []
    for path in sorted((GRAFANA / "dashboards").rglob("*.json")):
        model = json.loads(path.read_text("utf-8"))
        model["__folder"] = path.parent.name
        models.append(model)
    return {CONTAINER_DASHBOARDS: models}


def test_dashboard_uids_are_unique_across_all_providers() -> None:
    configs = load_folder("dashboards")
    dashboards = mounted_dashboards()
    assert provider_violations(configs, dashboards) == []
    second = {"providers": [{**configs[0]["providers"][0], "name": "sample"}]}  # the old sample.yaml
    assert any("provisioned 2 times" in p for p in provider_violations([*configs, second], dashboards))


def test_dashboard_folders_and_uids_are_valid() -> None:
    """foldersFromFilesStructure names each folder after its directory (file_reader.go,
    getOrCreateFolder): a blank name fails; uids follow util.ValidateUID and the 40-character limit."""
    for model in mounted_dashboards()[CONTAINER_DASHBOARDS]:
        assert model["__folder"].strip() and SHORT_UID.match(model["uid"]), model["uid"]
    for cluster_id in default_registry().super_clusters:
        assert SHORT_UID.match(folder_uid(cluster_id))


# ---- alert rules -------------------------------------------------------------------------------


def rules(alerting: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(group, rule) for config in alerting for group in config.get("groups") or [] for rule in group["rules"]]


def rule_violations(alerting: list[dict[str, Any]], datasource_uids: set[str]) -> list[str]:
    """The checks a provisioned rule group goes through in Grafana:
    - rules_types.go, AlertRuleGroupV1.MapToModel / AlertRuleV1.mapToModel: group name, folder, title,
      uid, condition and data set; `for` and `interval` parse as durations;
    - validateCondition (pkg/services/ngalert/api/api_testing.go, ruler validation): the condition
      names the refId of one of the rule's queries or expressions;
    - AlertQuery.PreSave with RelativeTimeRange.isValid (pkg/services/ngalert/models/alert_query.go):
      a datasource query (not an expression) needs from > to;
    - every datasourceUid resolves to a provisioned datasource or the expression engine (__expr__);
    - rule uids are unique and valid short uids (at most 40 characters);
    - annotations hold no `${`: Grafana up to 11 reads them raw (`Annotations.Raw`), newer ones expand
      braced variables only (`Annotations.ValueWithBracedVars`), so only text without `${` reads the same
      in both."""
    problems = []
    seen: Counter[str] = Counter()
    for group, rule in rules(alerting):
        where = f"{group.get('name')}/{rule.get('uid')}"
        if not str(group.get("name", "")).strip() or not str(group.get("folder", "")).strip():
            problems.append(f"{where}: group without name or folder")
        if not re.fullmatch(r"\d+[smhd]", str(group.get("interval", ""))):
            problems.append(f"{where}: interval {group.get('interval')!r}")
        seen[rule.get("uid", "")] += 1
        if not SHORT_UID.match(rule.get("uid", "")) or not rule.get("title"):
            problems.append(f"{where}: uid or title invalid")
        if any("${" in text for text in (rule.get("annotations") or {}).values()):
            problems.append(f"{where}: an annotation holds ${{, which newer Grafana expands")
        ref_ids = [q.get("refId") for q in rule.get("data") or []]
        if rule.get("condition") not in ref_ids:
            problems.append(f"{where}: condition {rule.get('condition')!r} is not one of {ref_ids}")
        for query in rule.get("data") or []:
            uid = query.get("datasourceUid")
            if uid not in datasource_uids | {EXPRESSION_UID}:
                problems.append(f"{where}: datasourceUid {uid!r} does not resolve")
            span = query.get("relativeTimeRange") or {}
            if uid != EXPRESSION_UID and not span.get("from", 0) > span.get("to", 0):
                problems.append(f"{where}: query {query.get('refId')} has no valid relativeTimeRange")
            if (query.get("model") or {}).get("refId", query.get("refId")) != query.get("refId"):
                problems.append(f"{where}: model refId differs from {query.get('refId')}")
    problems += [f"rule uid {uid!r} used {n} times" for uid, n in seen.items() if n > 1]
    return problems


def datasource_uids() -> set[str]:
    return {ds["uid"] for config in load_folder("datasources") for ds in config["datasources"]}


def test_every_alert_rule_passes_grafanas_rule_checks() -> None:
    alerting = load_folder("alerting")
    assert len(rules(alerting)) > 30
    assert rule_violations(alerting, datasource_uids()) == []


def test_the_rule_checks_catch_the_old_sample_rule() -> None:
    """The sample.yaml that sat in provisioning/alerting: condition C over a lone query A."""
    broken = {
        "groups": [
            {
                "orgId": 1,
                "name": "lanna-air-quality",
                "folder": "Lanna",
                "interval": "60s",
                "rules": [
                    {
                        "uid": "lanna-aqi-band-4",
                        "title": "t",
                        "condition": "C",
                        "data": [{"refId": "A", "datasourceUid": "smartcity-influxdb", "model": {"refId": "A"}}],
                        "annotations": {"summary": "Sensor ${sensor}"},
                    }
                ],
            }
        ]
    }
    problems = rule_violations([broken], datasource_uids())
    assert any("condition 'C'" in p for p in problems) and any("relativeTimeRange" in p for p in problems)
    assert any("newer Grafana expands" in p for p in problems)
    assert any("does not resolve" in p for p in rule_violations([broken], set()))


def test_alert_rule_folders_are_the_dashboard_folders() -> None:
    """Rules go to the folder of the dashboards they link to (rules_provisioner.go looks the folder up by
    title and creates it when missing, so a differing title would make a second folder)."""
    dashboard_folders = {p.name for p in (GRAFANA / "dashboards").iterdir() if p.is_dir()}
    assert {group["folder"] for group, _ in rules(load_folder("alerting"))} <= dashboard_folders


def test_policies_route_only_to_provisioned_contact_points() -> None:
    """notification_policy_provisioner.go: the policy tree is rejected when a route names a receiver
    that does not exist (ValidateRoute / receiver lookup)."""
    alerting = load_folder("alerting")
    names = {cp["name"] for config in alerting for cp in config.get("contactPoints") or []}

    def receivers(route: dict[str, Any]) -> set[str]:
        return {route["receiver"], *(r for child in route.get("routes") or [] for r in receivers(child))}

    policies = [p for config in alerting for p in config.get("policies") or []]
    assert len(policies) == 1 and receivers(policies[0]) <= names


def test_nothing_but_provisioning_files_in_the_mounted_folders() -> None:
    assert all_files_are_yaml() == []
    assert sorted(p.name for p in PROVISIONING.iterdir()) == ["alerting", "dashboards", "datasources"]


@pytest.mark.parametrize("text", ["$5 per hour", "{{ $labels.site }}"])
def test_expanded_fields_survive_grafanas_interpolation(text: str) -> None:
    """interpolateValue (pkg/services/provisioning/values/values.go) splits on `$$`, expands each part
    with os.ExpandEnv and joins with `$`: what escape_env writes comes back as written."""
    assert grafana_interpolate(escape_env(text), {}) == text
    assert grafana_interpolate(text, {}) != text  # unescaped, Grafana would eat it


_ENV = re.compile(r"\$(\{[^}]*\}|[*#$@!?\-0-9]|[A-Za-z0-9_]+)")


def grafana_interpolate(value: str, env: dict[str, str]) -> str:
    """values.go interpolateValue: split on `$$`, os.ExpandEnv each part, join with `$`."""

    def expand(part: str) -> str:
        return _ENV.sub(lambda m: env.get(m.group(1).strip("{}"), ""), part)

    return "$".join(expand(part) for part in value.split("$$"))


def test_the_hand_written_samples_obey_the_same_rules() -> None:
    """The references in samples/ document working configuration, not a rule Grafana would refuse."""
    samples = GRAFANA / "samples"
    load = {
        name: [yaml.safe_load((samples / f"{name}.yaml").read_text("utf-8"))] for name in ("alerting", "datasources")
    }
    assert rule_violations(load["alerting"], datasource_uids()) == []
    assert default_datasource_violations(load["datasources"]) == []
