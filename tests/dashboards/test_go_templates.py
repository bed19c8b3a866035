"""Every alert and notification template in the generated provisioning, run by Go's own text/template.

`gotemplate/expand.go` mirrors how Grafana expands them (see its header: Expand() in Grafana's
pkg/services/ngalert/state/template/template.go for rule annotations and labels, Alertmanager's
notification data for contact point settings, with the template functions under their real names).
The test compiles it with Debian's `golang-go` (from `bash deploy/install-system-deps.sh`; standard
library only, nothing downloaded) and feeds it each template with sample data built from the rule:
its labels, the tags its query groups by, and a value for each expression. A template must parse,
execute and read as text: no `$$`, no `{{`, no `[no value]` (a label the query does not return).

Grafana's dashboards have no Go templates (links and titles use its own `${var}` syntax), so the
dashboard JSON is checked to contain none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.provisioning import generate, rendered_files
from sensors.registry import default_registry
from tests.dashboards.test_grafana_conformance import GRAFANA, grafana_interpolate

EXPANDER = Path(__file__).with_name("gotemplate") / "expand.go"
GROUP_BY = re.compile(r"GROUP BY ([^()]*?)(?: fill\(|$)")
UNREADABLE = ("$$", "{{", "}}", "[no value]", "<no value>", "%!")
SAMPLE_ENV = {
    "SMARTCITY_ALERT_WEBHOOK_URL": "https://hooks.example/smartcity",
    "SMARTCITY_ALERT_EMAIL": "ops@example.org",
}


@pytest.fixture(scope="module")
def expander(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail("no Go toolchain: install it with 'bash deploy/install-system-deps.sh' (golang-go)", pytrace=False)
    work = tmp_path_factory.mktemp("gotemplate")
    env = {
        **os.environ,
        "GOCACHE": str(work / "cache"),
        "GOPATH": str(work / "gopath"),
        "GOTOOLCHAIN": "local",  # never download a toolchain
        "GOFLAGS": "",
        "GO111MODULE": "off",  # a single file of the standard library: no module, no proxy
        "GOPROXY": "off",
    }
    binary = work / "expand"
    subprocess.run([go, "build", "-o", str(binary), str(EXPANDER)], env=env, check=True, timeout=240)
    return binary


def expand(binary: Path, requests: list[dict[str, Any]]) -> list[dict[str, str]]:
    done = subprocess.run([str(binary)], input=json.dumps(requests), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    results: list[dict[str, str]] = json.loads(done.stdout)
    assert [r["name"] for r in results] == [r["name"] for r in requests]
    return results


def series_labels(rule: dict[str, Any]) -> dict[str, str]:
    """What one alert instance of the rule carries: its labels, the tags its query groups by, alertname."""
    labels = {"alertname": rule["title"], "grafana_folder": "Lanna", **rule.get("labels", {})}
    for query in rule["data"]:
        text = query["model"].get("query", "")
        for group in GROUP_BY.findall(text):
            for tag in re.findall(r'"([^"]+)"', group):
                labels.setdefault(tag, f"sample-{tag.replace('_', '-')}")
    return labels


def rule_requests(alerting: dict[str, Any]) -> list[dict[str, Any]]:
    """Annotations as written (Grafana reads them raw); labels after Grafana's env interpolation."""
    requests = []
    for group in alerting["groups"]:
        for rule in group["rules"]:
            labels = series_labels(rule)
            values = {q["refId"]: 0.1234 for q in rule["data"] if q["datasourceUid"] == "__expr__"}
            texts = [(f"annotation {k}", v) for k, v in rule.get("annotations", {}).items()]
            texts += [(f"label {k}", grafana_interpolate(v, SAMPLE_ENV)) for k, v in rule.get("labels", {}).items()]
            for what, text in texts:
                name = f"{rule['uid']} {what}"
                requests.append({"name": name, "kind": "rule", "text": text, "labels": labels, "values": values})
    return requests


def notification_requests(alerting: dict[str, Any]) -> list[dict[str, Any]]:
    """Contact point settings that are templates, after Grafana's env interpolation (settings are expanded)."""
    requests = []
    for point in alerting["contactPoints"]:
        for receiver in point["receivers"]:
            for key, value in receiver["settings"].items():
                if isinstance(value, str) and "{{" in value:
                    requests.append(
                        {
                            "name": f"{receiver['uid']} {key}",
                            "kind": "notification",
                            "text": grafana_interpolate(value, SAMPLE_ENV),
                            "labels": {"alertname": "Sample alert", "super_cluster": "lanna", "severity": "warning"},
                            "values": {"B": 1.0},
                        }
                    )
    return requests


def alerting_files() -> dict[str, dict[str, Any]]:
    """The committed file, and the one `dashboards build --alert-email` writes (with the e-mail template)."""
    with_email = rendered_files(generate(default_registry()), email=True)[Path("provisioning/alerting/smartcity.yaml")]
    return {
        "committed": yaml.safe_load((GRAFANA / "provisioning/alerting/smartcity.yaml").read_text("utf-8")),
        "with e-mail": yaml.safe_load(with_email),
    }


def unreadable(results: list[dict[str, str]]) -> list[str]:
    bad = []
    for result in results:
        output = result["output"]
        if result["error"] or not output.strip() or any(token in output for token in UNREADABLE):
            bad.append(f"{result['name']}: {result['error'] or output!r}")
    return bad


@pytest.mark.timeout(300)
def test_every_alert_template_parses_executes_and_reads_well(expander: Path) -> None:
    for variant, alerting in alerting_files().items():
        requests = rule_requests(alerting) + notification_requests(alerting)
        assert sum(r["kind"] == "rule" and "annotation" in r["name"] for r in requests) > 30, variant
        assert any(r["kind"] == "notification" for r in requests) == (variant == "with e-mail")
        results = expand(expander, requests)
        assert unreadable(results) == [], variant
    sample = next(r for r in results if r["name"].startswith("lanna-aqi-band-4 annotation"))
    assert sample["output"].startswith("District sample-district: Thai AQI band 0.12 (")


@pytest.mark.timeout(300)
def test_the_checker_rejects_the_old_double_dollar_form(expander: Path) -> None:
    labels = {"district": "mueang-chiang-mai"}
    requests = [
        {"name": "old", "kind": "rule", "text": "District {{ $$labels.district }}", "labels": labels, "values": {}},
        {"name": "missing", "kind": "rule", "text": "Vendor {{ $labels.vendor }}", "labels": labels, "values": {}},
        {"name": "unknown", "kind": "rule", "text": "{{ humanise 1 }}", "labels": labels, "values": {}},
        {"name": "mail", "kind": "notification", "text": "{{ .Alerts.Firing.x }}", "labels": labels, "values": {}},
        {"name": "new", "kind": "rule", "text": "District {{ $labels.district }}", "labels": labels, "values": {}},
    ]
    results = {r["name"]: r for r in expand(expander, requests)}
    assert "bad character U+0024" in results["old"]["error"]  # what Grafana logged for every alert
    assert results["missing"]["output"] == "Vendor [no value]"
    assert 'function "humanise" not defined' in results["unknown"]["error"]
    assert results["mail"]["error"]
    assert results["new"] == {"name": "new", "output": "District mueang-chiang-mai", "error": ""}
    assert len(unreadable(list(results.values()))) == 4


def test_dashboards_hold_no_go_templates() -> None:
    """Dashboard links and titles use Grafana's own `${var}` interpolation, never Go templates."""
    for path in (GRAFANA / "dashboards").rglob("*.json"):
        text = path.read_text("utf-8")
        assert "{{" not in text and "$$" not in text, path
