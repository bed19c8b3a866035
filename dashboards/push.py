"""Upload folders, dashboards, alert rules, contact point and policy through Grafana's HTTP API.

For a Grafana that does not read our provisioning files (Grafana Cloud, a shared instance).
Every call overwrites by uid, so pushing twice changes nothing the second time:

    GET  /api/datasources/uid/smartcity-influxdb                          the datasource must exist
    GET  /api/folders/{uid}, then POST /api/folders or PUT /api/folders/{uid}
    POST /api/dashboards/db                    {dashboard, folderUid, overwrite: true}
    PUT  /api/v1/provisioning/folder/{folderUid}/rule-groups/{group}     the whole group
    GET  /api/v1/provisioning/contact-points, then POST or PUT .../contact-points/{uid}
    PUT  /api/v1/provisioning/policies                                   the notification policy tree

The contact point and policy are pushed only with a webhook URL (the policy routes to it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from dashboards import alerts
from dashboards.influxql import DATASOURCE_UID
from dashboards.provisioning import Provisioning
from sensors.errors import SmartcityError

logger = logging.getLogger(__name__)

TIMEOUT_S = 30.0


class PushError(SmartcityError):
    """Grafana refused or could not be reached; the message names the object and the answer."""


@dataclass(frozen=True)
class PushReport:
    folders: int
    dashboards: int
    rule_groups: int
    contact_point: bool


class Pusher:
    def __init__(self, url: str, token: str, on_step: Callable[[str], None] = lambda _: None) -> None:
        self.url = url
        self.api = GrafanaApi.from_url(url, credential=token or None, timeout=TIMEOUT_S)
        self.on_step = on_step

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GrafanaException as err:
            raise PushError(f"Grafana at {self.url} refused {what}: HTTP {err.status_code} {err.message}") from err
        except Exception as err:  # connection errors come from the HTTP library underneath
            raise PushError(f"Grafana at {self.url} unreachable while pushing {what}: {err}") from err

    def _exists(self, what: str, fn: Callable[..., Any], *args: Any) -> Any | None:
        try:
            return fn(*args)
        except GrafanaClientError as err:
            if err.status_code == 404:
                return None
            raise PushError(f"Grafana at {self.url} refused {what}: HTTP {err.status_code} {err.message}") from err
        except GrafanaException as err:
            raise PushError(f"Grafana at {self.url} refused {what}: HTTP {err.status_code} {err.message}") from err
        except Exception as err:
            raise PushError(f"Grafana at {self.url} unreachable while reading {what}: {err}") from err

    def push(self, provisioning: Provisioning, webhook_url: str | None = None) -> PushReport:
        if (
            self._exists(f"datasource {DATASOURCE_UID}", self.api.datasource.get_datasource_by_uid, DATASOURCE_UID)
            is None
        ):
            raise PushError(
                f"Grafana at {self.url} has no datasource with uid {DATASOURCE_UID!r}: create it first "
                "(deploy/grafana/provisioning/datasources/smartcity.yaml lists its settings)"
            )
        folders = {(d.folder_uid, d.folder) for d in provisioning.dashboards}
        folders |= {(g.folder_uid, g.folder) for g in provisioning.rule_groups}
        for uid, title in sorted(folders):
            self.on_step(f"folder {title}")
            current = self._exists(f"folder {uid}", self.api.folder.get_folder, uid)
            if current is None:
                self._call(f"folder {uid}", self.api.folder.create_folder, title, uid=uid)
            elif current.get("title") != title:
                self._call(f"folder {uid}", self.api.folder.update_folder, uid, title=title, overwrite=True)
        for dashboard in provisioning.dashboards:
            self.on_step(f"dashboard {dashboard.uid}")
            body = {
                "dashboard": {**dashboard.model, "id": None},
                "folderUid": dashboard.folder_uid,
                "overwrite": True,
                "message": "smartcity dashboards push",
            }
            self._call(f"dashboard {dashboard.uid}", self.api.dashboard.update_dashboard, body)
        for group in provisioning.rule_groups:
            self.on_step(f"alert rule group {group.name}")
            self._call(
                f"alert rule group {group.name}",
                self.api.alertingprovisioning.update_rule_group,
                group.folder_uid,
                group.name,
                group.api_group(),
            )
        if webhook_url:
            self.on_step("contact point and notification policy")
            contact = alerts.contact_point(webhook_url)
            existing = self._call("contact points", self.api.alertingprovisioning.get_contactpoints)
            if any(c.get("uid") == contact["uid"] for c in existing or []):
                self._call(
                    f"contact point {contact['uid']}",
                    self.api.alertingprovisioning.update_contactpoint,
                    contact["uid"],
                    contact,
                )
            else:
                self._call(
                    f"contact point {contact['uid']}", self.api.alertingprovisioning.create_contactpoint, contact
                )
            self._call(
                "notification policy",
                self.api.alertingprovisioning.set_notification_policy_tree,
                alerts.notification_policy(),
            )
        return PushReport(len(folders), len(provisioning.dashboards), len(provisioning.rule_groups), bool(webhook_url))
