"""Create the database and its retention policies; safe to run at every start.

On InfluxDB 1.x (user with admin rights):

    CREATE DATABASE "smartcity"
    CREATE RETENTION POLICY "raw" ON "smartcity" DURATION 30d REPLICATION 1 SHARD DURATION 1d DEFAULT
    CREATE RETENTION POLICY "rollup" ON "smartcity" DURATION 730d REPLICATION 1 SHARD DURATION 7d

An existing policy whose duration (or default flag) differs from the settings
is changed with ALTER RETENTION POLICY; one that matches is left alone. On
2.x/3.x, buckets and DBRP mappings are created with the `influx` CLI by an
operator with an all-access token, so `bootstrap` returns those commands
instead of running anything (see `v2_commands`).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from storage.query import QueryClient, ident
from storage.settings import InfluxSettings, duration_ns

logger = logging.getLogger(__name__)

_HOUR_NS = 3600 * 10**9
_DAY_NS = 24 * _HOUR_NS
_GO_DURATION = re.compile(r"([0-9.]+)(h|m|s|ms|us|µs|ns)")
_GO_UNITS_NS = {"h": _HOUR_NS, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3, "ns": 1}


@dataclass(frozen=True)
class BootstrapReport:
    """What bootstrap did: `actions` lists changes (empty when all was in place); on 2.x, `commands`
    holds the `influx` CLI commands to run instead."""

    actions: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


def go_duration_ns(text: str) -> int:
    """Nanoseconds of a Go duration as SHOW RETENTION POLICIES prints it (`720h0m0s`; `0s` is infinite)."""
    return round(sum(float(number) * _GO_UNITS_NS[unit] for number, unit in _GO_DURATION.findall(text)))


def shard_duration(retention_ns: int) -> str:
    """InfluxDB's own default shard group duration for a retention period."""
    if retention_ns == 0:
        return "7d"
    if retention_ns < 2 * _DAY_NS:
        return "1h"
    if retention_ns <= 180 * _DAY_NS:
        return "1d"
    return "7d"


def v2_commands(settings: InfluxSettings) -> list[str]:
    """`influx` CLI commands that create the two buckets and their DBRP mappings on 2.x."""
    org = shlex.quote(settings.org)
    commands = []
    for rp, retention in ((settings.raw_rp, settings.raw_retention), (settings.rollup_rp, settings.rollup_retention)):
        bucket = shlex.quote(settings.bucket(rp))
        keep = "0" if retention == "INF" else retention
        commands.append(f"influx bucket create --org {org} --name {bucket} --retention {keep}")
    for rp in (settings.raw_rp, settings.rollup_rp):
        bucket = shlex.quote(settings.bucket(rp))
        default = " --default" if rp == settings.raw_rp else ""
        commands.append(
            f"influx v1 dbrp create --org {org} --db {shlex.quote(settings.db)} --rp {shlex.quote(rp)}{default} "
            f"--bucket-id $(influx bucket list --org {org} --name {bucket} --hide-headers | cut -f1)"
        )
    return commands


def bootstrap(settings: InfluxSettings, on_step: Callable[[str], None] = lambda _: None) -> BootstrapReport:
    """Make the database and retention policies match `settings`; reports each change through `on_step`."""
    if settings.api == "v2":
        commands = v2_commands(settings)
        on_step("InfluxDB 2.x/3.x: create the buckets and DBRP mappings with:")
        for command in commands:
            on_step("  " + command)
        return BootstrapReport(commands=commands)

    actions: list[str] = []

    def act(message: str) -> None:
        actions.append(message)
        logger.info("%s", message)
        on_step(message)

    db = ident(settings.db)
    with QueryClient(settings) as client:
        existing = {row[0] for s in client.query("SHOW DATABASES", db="") for row in s.values}
        if settings.db not in existing:
            client.execute("CREATE DATABASE {db}", {"db": db}, db="")
            act(f"created database {settings.db}")
        policies = {}
        for series in client.query("SHOW RETENTION POLICIES ON {db}", {"db": db}, db=""):
            for record in series.records():
                policies[record["name"]] = record
        wanted = (
            (settings.raw_rp, settings.raw_retention, True),
            (settings.rollup_rp, settings.rollup_retention, False),
        )
        for name, retention, default in wanted:
            want_ns = duration_ns(retention)
            shard = shard_duration(want_ns)
            params = {"rp": ident(name), "db": db}
            clause = f"DURATION {retention} REPLICATION 1 SHARD DURATION {shard}" + (" DEFAULT" if default else "")
            current = policies.get(name)
            if current is None:
                client.execute("CREATE RETENTION POLICY {rp} ON {db} " + clause, params, db="")
                act(f"created retention policy {name} ({retention}{', default' if default else ''})")
                continue
            have_ns = go_duration_ns(str(current.get("duration", "")))
            if have_ns != want_ns or (default and not current.get("default")):
                client.execute("ALTER RETENTION POLICY {rp} ON {db} " + clause, params, db="")
                act(f"changed retention policy {name} to {retention}{', default' if default else ''}")
    return BootstrapReport(actions=actions)
