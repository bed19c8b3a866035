"""`dashboards push` against a contract test server that checks paths and bodies against Grafana's
documented HTTP API (folders, dashboards, alerting provisioning). It is not Grafana: it records what
push sends and answers the way the documentation says Grafana answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dashboards.provisioning import generate
from dashboards.push import Pusher, PushError
from deploy.cli import main
from sensors.registry import default_registry

TOKEN = "glsa_contract_test"


class GrafanaContract:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.folders: dict[str, str] = {}
        self.contact_points: dict[str, dict[str, Any]] = {}
        self.has_datasource = True
        self.violations: list[str] = []


def handler(state: GrafanaContract) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _checked(self, method: str) -> None:
            try:
                self._handle(method)
            except (AssertionError, KeyError, TypeError) as err:
                state.violations.append(f"{method} {self.path}: {err!r}")
                self._answer(400, {"message": f"contract violation: {err!r}"})

        def _handle(self, method: str) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._answer(401, {"message": "Unauthorized"})
            length = int(self.headers.get("Content-Length") or 0)
            body: Any = json.loads(self.rfile.read(length)) if length else {}
            path = self.path.split("?")[0]
            state.requests.append((method, path, body))
            parts = path.strip("/").split("/")
            if method == "GET" and path == "/api/datasources/uid/smartcity-influxdb":
                if state.has_datasource:
                    return self._answer(200, {"uid": "smartcity-influxdb", "type": "influxdb"})
                return self._answer(404, {"message": "Data source not found"})
            if parts[:2] == ["api", "folders"]:
                if method == "GET" and len(parts) == 3:
                    uid = parts[2]
                    if uid in state.folders:
                        return self._answer(200, {"uid": uid, "title": state.folders[uid]})
                    return self._answer(404, {"message": "folder not found"})
                if method == "POST" and len(parts) == 2:
                    assert set(body) >= {"uid", "title"}
                    state.folders[body["uid"]] = body["title"]
                    return self._answer(200, {"uid": body["uid"], "title": body["title"]})
                if method == "PUT" and len(parts) == 3:
                    assert body["overwrite"] is True and body["title"]
                    state.folders[parts[2]] = body["title"]
                    return self._answer(200, {"uid": parts[2], "title": body["title"]})
            if method == "POST" and path == "/api/dashboards/db":
                assert body["overwrite"] is True and body["folderUid"] in state.folders
                assert body["dashboard"]["uid"] and body["dashboard"]["id"] is None
                return self._answer(200, {"status": "success", "uid": body["dashboard"]["uid"]})
            if method == "PUT" and len(parts) == 7 and parts[:4] == ["api", "v1", "provisioning", "folder"]:
                folder_uid, group = parts[4], parts[6]
                assert parts[5] == "rule-groups" and folder_uid in state.folders
                assert body["title"] == group and body["folderUid"] == folder_uid
                assert isinstance(body["interval"], int) and body["interval"] > 0
                for rule in body["rules"]:
                    assert rule["folderUID"] == folder_uid and rule["ruleGroup"] == group
                    assert rule["condition"] in {d["refId"] for d in rule["data"]}
                    assert rule["annotations"]["__dashboardUid__"] and rule["annotations"]["__panelId__"]
                return self._answer(200, body)
            if path == "/api/v1/provisioning/contact-points":
                if method == "GET":
                    return self._answer(200, list(state.contact_points.values()))
                if method == "POST":
                    assert body["type"] == "webhook" and body["settings"]["url"]
                    state.contact_points[body["uid"]] = body
                    return self._answer(202, body)
            if method == "PUT" and parts[:4] == ["api", "v1", "provisioning", "contact-points"]:
                assert parts[4] in state.contact_points
                state.contact_points[parts[4]] = body
                return self._answer(202, body)
            if method == "PUT" and path == "/api/v1/provisioning/policies":
                assert body["receiver"] in {c["name"] for c in state.contact_points.values()}
                return self._answer(202, {"message": "policies updated"})
            return self._answer(404, {"message": f"not in the contract: {method} {path}"})

        def do_GET(self) -> None:
            self._checked("GET")

        def do_POST(self) -> None:
            self._checked("POST")

        def do_PUT(self) -> None:
            self._checked("PUT")

    return Handler


@pytest.fixture
def grafana() -> Iterator[tuple[str, GrafanaContract]]:
    state = GrafanaContract()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_push_uploads_everything_and_is_idempotent(grafana: tuple[str, GrafanaContract]) -> None:
    url, state = grafana
    provisioning = generate(default_registry())
    report = Pusher(url, TOKEN).push(provisioning, webhook_url="https://hooks.example/smartcity")
    assert report.dashboards == len(provisioning.dashboards) and report.contact_point
    first = list(state.requests)
    assert state.violations == []
    assert set(state.folders) == {"smartcity-andaman", "smartcity-lanna", "smartcity-operations"}
    pushed = [b["dashboard"]["uid"] for m, p, b in first if p == "/api/dashboards/db"]
    assert pushed == [d.uid for d in provisioning.dashboards]
    groups = [p.rsplit("/", 1)[1] for m, p, _ in first if "/rule-groups/" in p]
    assert groups == [g.name for g in provisioning.rule_groups]

    state.requests.clear()
    Pusher(url, TOKEN).push(provisioning, webhook_url="https://hooks.example/smartcity")
    second = [(m, p) for m, p, _ in state.requests]
    assert ("POST", "/api/folders") not in second  # folders exist: not created again
    assert ("POST", "/api/v1/provisioning/contact-points") not in second
    assert ("PUT", "/api/v1/provisioning/contact-points/smartcity-operators-webhook") in second
    assert len(state.folders) == 3 and len(state.contact_points) == 1
    assert state.violations == []


def test_push_without_webhook_leaves_contact_points_alone(grafana: tuple[str, GrafanaContract]) -> None:
    url, state = grafana
    Pusher(url, TOKEN).push(generate(default_registry()))
    assert not any("contact-points" in p or "policies" in p for _, p, _ in state.requests)


def test_push_needs_the_datasource_and_a_valid_token(
    grafana: tuple[str, GrafanaContract], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    url, state = grafana
    state.has_datasource = False
    with pytest.raises(PushError, match="no datasource with uid 'smartcity-influxdb'"):
        Pusher(url, TOKEN).push(generate(default_registry()))
    assert main(["dashboards", "push", "--url", url, "--token", "wrong"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    assert main(["dashboards", "push", "--url", url]) == 2  # missing --token is a usage error
