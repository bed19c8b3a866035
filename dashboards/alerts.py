"""Alert rules, the contact point and the notification policy, generated from the registry.

Rules (each with a stable uid and a link to the panel that shows its data):

- Thai AQI band 4 or 5 ("starting to affect health" or worse) for 1 h, per district;
- a site-threshold metric (flood water level) past the site's warning or danger line, per site;
- a sensor silent for more than 3 of its kind's reporting intervals, per kind and sensor;
- the share of rejected messages above 5% over 15 min, per vendor (with at least 100 messages);
- ingest lagging (spool older than 60 s) or not reporting at all;
- loss ingest sees itself (`LOSS_ALERTS`): messages the broker dropped, a lost or restored broker
  session, records of a damaged spool segment, rejections not kept (a vendor over its reject budget).

Every rule is InfluxQL query A, then Grafana's server-side expressions B = reduce(A, last) and
C = threshold(B); C is the condition. `AlertRule` holds one rule; `file_rule()` and `api_rule()`
give the file-provisioning and HTTP-API shapes of it (they name the dashboard link differently).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dashboards import frame
from dashboards.boards.air import AQI_DISTRICT_PANEL, pollutant_thresholds
from dashboards.boards.health import SILENT_INTERVALS, silence_query, silent_panel_title
from dashboards.boards.kinds import site_panel_title
from dashboards.boards.operations import (
    LOSS_PANEL,
    OPERATIONS_FOLDER,
    REJECT_RATIO_LIMIT,
    REJECT_RATIO_MIN_MESSAGES,
    REJECT_RATIO_PANEL,
    REJECT_RATIO_WINDOW_S,
)
from dashboards.influxql import DATASOURCE_UID, InfluxQLQuery, literal, quote, raw_from, rollup_from
from sensors.aqi import BANDS
from sensors.registry import Registry
from storage import schema

ORG_ID = 1
CONTACT_POINT = "smartcity-operators"
CONTACT_POINT_UID = "smartcity-operators-webhook"
CONTACT_POINT_EMAIL_UID = "smartcity-operators-email"
# Grafana reads the webhook URL and the e-mail addresses from these environment variables when it
# loads the provisioning files.
WEBHOOK_ENV = "SMARTCITY_ALERT_WEBHOOK_URL"
EMAIL_ENV = "SMARTCITY_ALERT_EMAIL"
# Notification template (Go text/template over Grafana's notification data) of the e-mail subject.
EMAIL_SUBJECT = (
    "[{{ .Status | toUpper }}] smartcity: {{ .GroupLabels.alertname }} "
    "({{ len .Alerts.Firing }} firing, {{ len .Alerts.Resolved }} resolved)"
)
UID_MAX = 40  # Grafana's limit for alert rule uids
AQI_ALERT_BAND = 4
INGEST_LAG_LIMIT_S = 60

Evaluator = Literal["gt", "lt"]

# Loss visible without manifests: ingest counter field -> (title, summary, severity). Any count in the last
# 15 min fires. A restored session is a warning: a clean broker restart restores it too.
LOSS_WINDOW_S = 900
LOSS_ALERTS: dict[str, tuple[str, str, str]] = {
    schema.INGEST_BROKER_DROPPED: (
        "The broker dropped messages",
        "The broker dropped {{ $values.B }} messages in 15 min (its dropped-message counter, seen by ingest "
        "{{ $labels.instance }}): a session queue was full, e.g. ingest's while it was away or behind.",
        "critical",
    ),
    schema.INGEST_SESSION_NOT_PRESENT: (
        "Ingest found no broker session",
        "Ingest {{ $labels.instance }} reconnected and the broker had no session for it: messages queued "
        "while it was away may be lost (session expired, or the broker lost its persistence).",
        "critical",
    ),
    schema.INGEST_SESSION_RESTORED: (
        "The broker restarted with an old copy of ingest's session",
        "Ingest {{ $labels.instance }} reconnected to a restarted broker that restored its session from the "
        "persistence file: messages queued after the broker's last save may be lost.",
        "warning",
    ),
    schema.INGEST_SPOOL_LOST: (
        "Records lost in a damaged spool segment",
        "Ingest {{ $labels.instance }} found a closed spool segment that does not match its metadata: "
        "{{ $values.B }} records could not be read (see its log for the file).",
        "critical",
    ),
    schema.INGEST_REJECTS_NOT_STORED: (
        "Rejections answered but not stored",
        "Ingest {{ $labels.instance }} answered {{ $values.B }} rejected messages in 15 min on the reject topic "
        "without keeping them: a vendor is over its reject store budget, a flood of bad messages (which vendor: "
        "ingest_vendors.rejects_not_stored, and ingest's log).",
        "warning",
    ),
}


def short_uid(*parts: str) -> str:
    """A readable uid from `parts`; cut and suffixed with a hash when longer than Grafana allows."""
    uid = "-".join(parts).replace("_", "-")
    if len(uid) <= UID_MAX:
        return uid
    digest = hashlib.sha256(uid.encode()).hexdigest()[:8]
    return f"{uid[: UID_MAX - 9]}-{digest}"


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str
    query: InfluxQLQuery
    lookback_s: int
    evaluator: Evaluator
    threshold: float
    for_: str
    summary: str
    dashboard_uid: str
    panel_id: int
    labels: dict[str, str]
    no_data: Literal["OK", "NoData", "Alerting"] = "OK"

    def data(self) -> list[dict[str, Any]]:
        model = self.query.to_json()
        model.update({"intervalMs": 1000, "maxDataPoints": 43200})
        return [
            {
                "refId": "A",
                "relativeTimeRange": {"from": self.lookback_s, "to": 0},
                "datasourceUid": DATASOURCE_UID,
                "model": model,
            },
            {
                "refId": "B",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "B",
                    "type": "reduce",
                    "expression": "A",
                    "reducer": "last",
                    "settings": {"mode": "dropNN"},
                    "datasource": {"type": "__expr__", "uid": "__expr__"},
                },
            },
            {
                "refId": "C",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "C",
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"type": self.evaluator, "params": [self.threshold]}}],
                    "datasource": {"type": "__expr__", "uid": "__expr__"},
                },
            },
        ]

    def common(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "condition": "C",
            "data": self.data(),
            "noDataState": self.no_data,
            "execErrState": "Error",
            "for": self.for_,
            "labels": dict(self.labels),
            "isPaused": False,
        }

    def file_rule(self) -> dict[str, Any]:
        rule = self.common()
        rule.update(
            dashboardUid=self.dashboard_uid,
            panelId=self.panel_id,
            annotations={"summary": self.summary},
        )
        return rule

    def api_rule(self, folder_uid: str, group: str) -> dict[str, Any]:
        rule = self.common()
        rule.update(
            orgID=ORG_ID,
            folderUID=folder_uid,
            ruleGroup=group,
            annotations={
                "summary": self.summary,
                "__dashboardUid__": self.dashboard_uid,
                "__panelId__": str(self.panel_id),
            },
        )
        return rule


@dataclass(frozen=True)
class RuleGroup:
    name: str
    folder: str
    folder_uid: str
    interval_s: int
    rules: list[AlertRule] = field(default_factory=list)

    def file_group(self) -> dict[str, Any]:
        return {
            "orgId": ORG_ID,
            "name": self.name,
            "folder": self.folder,
            "interval": f"{self.interval_s}s",
            "rules": [rule.file_rule() for rule in self.rules],
        }

    def api_group(self) -> dict[str, Any]:
        return {
            "title": self.name,
            "folderUid": self.folder_uid,
            "interval": self.interval_s,
            "rules": [rule.api_rule(self.folder_uid, self.name) for rule in self.rules],
        }


def _find(dashboards: Sequence[frame.GeneratedDashboard], uid: str) -> frame.GeneratedDashboard:
    for dashboard in dashboards:
        if dashboard.uid == uid:
            return dashboard
    raise KeyError(f"no generated dashboard {uid!r}")


def _dashboard_with_panel(dashboards: Sequence[frame.GeneratedDashboard], prefix: str, title: str) -> tuple[str, int]:
    """The first dashboard whose uid starts with `prefix` that has a panel titled `title`."""
    for dashboard in dashboards:
        if dashboard.uid.startswith(prefix):
            try:
                return dashboard.uid, dashboard.panel_id(title)
            except KeyError:
                continue
    raise KeyError(f"no dashboard {prefix}* has a panel {title!r}")


def cluster_groups(
    registry: Registry, cluster_id: str, dashboards: Sequence[frame.GeneratedDashboard]
) -> list[RuleGroup]:
    cluster = registry.super_clusters[cluster_id]
    view = frame.ClusterView(registry, cluster)
    folder, folder_uid = view.folder, frame.folder_uid(cluster_id)
    prefix = f"{frame.TAG}-{cluster_id}-"
    scope = view.scope
    labels = {"super_cluster": cluster_id}
    groups: list[RuleGroup] = []

    # AQI, only where some kind measures AQI pollutants (otherwise no dashboard has the panel).
    aqi_rules = []
    if any(pollutant_thresholds(m.name, m.unit) for kind in view.kinds for m in kind.metrics):
        dash_uid, panel = _dashboard_with_panel(dashboards, prefix, AQI_DISTRICT_PANEL)
        band = BANDS[AQI_ALERT_BAND - 1]
        query = InfluxQLQuery(
            "A",
            f'SELECT last("band") AS "band" FROM {rollup_from(schema.AQI_MEASUREMENT)} '
            f"WHERE {quote('level')} = 'district' AND {scope} AND time > now() - 3h GROUP BY \"district\"",
        )
        aqi_rules.append(
            AlertRule(
                uid=short_uid(cluster_id, "aqi-band", str(AQI_ALERT_BAND)),
                title=f"{cluster.name.en}: AQI band {AQI_ALERT_BAND}+ ({band.label_en}) for 1 h",
                query=query,
                lookback_s=3 * 3600,
                evaluator="gt",
                threshold=AQI_ALERT_BAND - 0.5,
                for_="1h",
                summary=(
                    f"District {{{{ $labels.district }}}}: Thai AQI band {{{{ $values.B }}}} "
                    f"({band.label_en} / {band.label_th} or worse) for over an hour. {band.advice_en}"
                ),
                dashboard_uid=dash_uid,
                panel_id=panel,
                labels={**labels, "smartcity_alert": "aqi", "severity": "warning"},
            )
        )
        groups.append(RuleGroup(f"{cluster_id}-air-quality", folder, folder_uid, 60, aqi_rules))

    # Site thresholds (flood water level): one rule per site and line, the direction from the data.
    site_rules = []
    for kind in view.kinds:
        for metric in kind.site_thresholds:
            for site_id, _ in view.sites_of(kind):
                threshold = registry.threshold(site_id, metric)
                if threshold is None:
                    continue
                site = registry.sites[site_id]
                dash_uid, panel = _dashboard_with_panel(dashboards, prefix, site_panel_title(kind, metric, site.name))
                rising = threshold.danger > threshold.warning
                for level, value in (("warning", threshold.warning), ("danger", threshold.danger)):
                    query = InfluxQLQuery(
                        "A",
                        f"SELECT {'max' if rising else 'min'}({quote(metric)}) AS {quote(metric)} "
                        f"FROM {raw_from(kind.id)} WHERE {scope} AND {quote('site')} = {literal(site_id)} "
                        f'AND time > now() - 10m GROUP BY "site"',
                    )
                    site_rules.append(
                        AlertRule(
                            uid=short_uid(cluster_id, site_id, metric, level),
                            title=f"{site_panel_title(kind, metric, site.name)}: {level}",
                            query=query,
                            lookback_s=600,
                            evaluator="gt" if rising else "lt",
                            threshold=value,
                            for_="2m",
                            summary=(
                                f"{site.name}: {metric} {{{{ $values.B }}}} is {'above' if rising else 'below'} "
                                f"the {level} line {value} (registry site threshold)."
                            ),
                            dashboard_uid=dash_uid,
                            panel_id=panel,
                            labels={
                                **labels,
                                "smartcity_alert": "site_threshold",
                                "severity": level,
                                "kind": kind.id,
                                "site": site_id,
                            },
                        )
                    )
    if site_rules:
        groups.append(RuleGroup(f"{cluster_id}-site-thresholds", folder, folder_uid, 60, site_rules))

    # Silent sensors, per kind.
    health_uid = frame.dashboard_uid(cluster_id, "sensor-health")
    health = _find(dashboards, health_uid)
    silent_rules = []
    for kind in view.kinds:
        silent_rules.append(
            AlertRule(
                uid=short_uid(cluster_id, "silent", kind.id),
                title=f"{cluster.name.en}: {kind.name.en} sensor silent for over {SILENT_INTERVALS} intervals",
                query=silence_query(kind, [scope]),
                lookback_s=6 * 3600,
                evaluator="lt",
                threshold=0.01,
                for_="0s",
                summary=(
                    f"Sensor {{{{ $labels.sensor_id }}}} ({{{{ $labels.vendor }}}}) has sent no reading for over "
                    f"{SILENT_INTERVALS * kind.interval_s} s "
                    f"({SILENT_INTERVALS} x its {kind.interval_s} s interval)."
                ),
                dashboard_uid=health_uid,
                panel_id=health.panel_id(silent_panel_title(kind)),
                labels={**labels, "smartcity_alert": "silent_sensor", "severity": "warning", "kind": kind.id},
            )
        )
    groups.append(RuleGroup(f"{cluster_id}-sensors", folder, folder_uid, 60, silent_rules))
    return groups


def operations_group(dashboards: Sequence[frame.GeneratedDashboard]) -> RuleGroup:
    ops = _find(dashboards, f"{frame.TAG}-operations")
    ingest = raw_from(schema.INGEST_MEASUREMENT)
    vendors = raw_from(schema.INGEST_VENDORS_MEASUREMENT)
    window_s = REJECT_RATIO_WINDOW_S
    rules = [
        AlertRule(
            uid=short_uid("ops", "reject-ratio"),
            title=f"A vendor's reject ratio above {REJECT_RATIO_LIMIT:.0%}",
            # Vendors with fewer messages in the window drop out in the outer WHERE (InfluxQL has no HAVING);
            # `* 1.0` because InfluxDB 1.6 divides integers as integers inside a subquery (measured).
            query=InfluxQLQuery(
                "A",
                'SELECT "ratio" FROM (SELECT sum("rejected") * 1.0 / sum("received") AS "ratio", '
                f'sum("received") AS "received" FROM {vendors} WHERE time > now() - {window_s}s GROUP BY "vendor") '
                f'WHERE "received" >= {REJECT_RATIO_MIN_MESSAGES} GROUP BY "vendor"',
            ),
            lookback_s=window_s,
            evaluator="gt",
            threshold=REJECT_RATIO_LIMIT,
            for_="10m",
            summary=(
                "{{ humanizePercentage $values.B.Value }} of the messages of vendor {{ $labels.vendor }} were "
                f"rejected over {window_s // 60} min ({schema.UNKNOWN_VENDOR}: topics that name no registered "
                "sensor); 'Rejects by code and vendor' on the Operations dashboard says why."
            ),
            dashboard_uid=ops.uid,
            panel_id=ops.panel_id(REJECT_RATIO_PANEL),
            labels={"smartcity_alert": "reject_ratio", "severity": "warning"},
        ),
        AlertRule(
            uid=short_uid("ops", "ingest-lag"),
            title=f"Ingest spool lag above {INGEST_LAG_LIMIT_S} s, or ingest not reporting",
            query=InfluxQLQuery(
                "A",
                f'SELECT max("spool_lag_s") AS "lag" FROM {ingest} WHERE time > now() - 5m GROUP BY "instance"',
            ),
            lookback_s=300,
            evaluator="gt",
            threshold=INGEST_LAG_LIMIT_S,
            for_="5m",
            summary="Ingest {{ $labels.instance }}: readings wait {{ $values.B }} s in the spool before InfluxDB.",
            dashboard_uid=ops.uid,
            panel_id=ops.panel_id("Spool lag"),
            labels={"smartcity_alert": "ingest_lag", "severity": "critical"},
            no_data="Alerting",  # no self-metrics for 5 minutes means ingest is down
        ),
    ]
    rules += [
        AlertRule(
            uid=short_uid("ops", "loss", field_name),
            title=title,
            query=loss_query(field_name),
            lookback_s=LOSS_WINDOW_S,
            evaluator="gt",
            threshold=0,
            for_="0s",
            summary=summary,
            dashboard_uid=ops.uid,
            panel_id=ops.panel_id(LOSS_PANEL),
            labels={"smartcity_alert": "ingest_loss", "severity": severity, "loss": field_name},
        )
        for field_name, (title, summary, severity) in LOSS_ALERTS.items()
    ]
    return RuleGroup("operations", OPERATIONS_FOLDER, f"{frame.TAG}-operations", 60, rules)


def loss_query(field_name: str) -> InfluxQLQuery:
    """The loss counter's sum over the alert window, per ingest instance (no series when there was none)."""
    return InfluxQLQuery(
        "A",
        f"SELECT sum({quote(field_name)}) AS {quote(field_name)} FROM {raw_from(schema.INGEST_MEASUREMENT)} "
        f'WHERE time > now() - {LOSS_WINDOW_S}s GROUP BY "instance"',
    )


def build_rule_groups(registry: Registry, dashboards: Sequence[frame.GeneratedDashboard]) -> list[RuleGroup]:
    groups: list[RuleGroup] = []
    for cluster_id in registry.super_clusters:
        groups.extend(cluster_groups(registry, cluster_id, dashboards))
    groups.append(operations_group(dashboards))
    return groups


def contact_point(webhook_url: str) -> dict[str, Any]:
    """The operators' contact point: a webhook (LINE, Slack, an incident tool ... sit behind it)."""
    return {
        "uid": CONTACT_POINT_UID,
        "name": CONTACT_POINT,
        "type": "webhook",
        "settings": {"url": webhook_url, "httpMethod": "POST"},
        "disableResolveMessage": False,
    }


def email_receiver(addresses: str) -> dict[str, Any]:
    """An e-mail integration of the operators' contact point (Grafana sends it through its GF_SMTP_* server)."""
    return {
        "uid": CONTACT_POINT_EMAIL_UID,
        "name": CONTACT_POINT,
        "type": "email",
        "settings": {"addresses": addresses, "singleEmail": True, "subject": EMAIL_SUBJECT},
        "disableResolveMessage": False,
    }


def notification_policy() -> dict[str, Any]:
    """Everything to the operators, grouped per alert, super-cluster and severity."""
    return {
        "receiver": CONTACT_POINT,
        "group_by": ["alertname", "super_cluster", "severity"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [
            {
                "receiver": CONTACT_POINT,
                "object_matchers": [["severity", "=~", "danger|critical"]],
                "group_wait": "10s",
                "repeat_interval": "1h",
            }
        ],
    }
