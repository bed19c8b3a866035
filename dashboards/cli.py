"""`smartcity dashboards build|check|push`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sensors.cli import registry_from, registry_option
from sensors.errors import SmartcityError
from sensors.settings import sample_keys

# (variable, default, help) of each setting, for `smartcity config show` and smartcity.toml validation.
CONFIG_KEYS = sample_keys(Path(__file__).with_name("sample.toml"))

console = Console(stderr=True)
out = Console()


class CheckFailed(SmartcityError):
    """Some panel, variable or alert query failed (or returned nothing with --expect-data)."""


@click.group("dashboards")
def dashboards_group() -> None:
    """Grafana dashboards and alert rules generated from the registry."""


@dashboards_group.command("build")
@registry_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deploy/grafana"),
    show_default=True,
    help="Folder for the provisioning files, dashboards and gazetteer.",
)
@click.option("--database", default="smartcity", show_default=True, help="InfluxDB database the datasource reads.")
@click.option(
    "--alert-email",
    is_flag=True,
    help="Also e-mail alerts to $SMARTCITY_ALERT_EMAIL through Grafana's SMTP server (GF_SMTP_*), besides the webhook.",
)
def build_command(registry_paths: Sequence[Path], out_dir: Path, database: str, alert_email: bool) -> None:
    """Write Grafana provisioning files: datasource, dashboard provider, dashboards, alerting."""
    from dashboards.provisioning import write_provisioning

    registry = registry_from(registry_paths)
    written = write_provisioning(registry, out_dir, database=database, email=alert_email)
    out.print(f"dashboards build: {len(written)} file(s) changed under {out_dir}")


@dashboards_group.command("check")
@registry_option
@click.option("--expect-data", is_flag=True, help="Also fail on panels and alert queries that return no series.")
def check_command(registry_paths: Sequence[Path], expect_data: bool) -> None:
    """Run every panel, variable and alert query against InfluxDB [env: SMARTCITY_INFLUX_*]."""
    from dashboards import check
    from dashboards.provisioning import generate
    from storage.query import QueryClient
    from storage.settings import InfluxSettings

    provisioning = generate(registry_from(registry_paths))
    settings = InfluxSettings.from_env()
    total = check.count_queries(provisioning.dashboards, provisioning.rule_groups)
    results: list[check.Result] = []
    with QueryClient(settings) as client, Progress(console=console, transient=True) as progress:
        task = progress.add_task("running queries", total=total)
        checker = check.Checker(client, on_query=lambda: progress.advance(task))
        for dashboard in provisioning.dashboards:
            progress.update(task, description=dashboard.title)
            results.extend(checker.dashboard(dashboard))
        results.extend(checker.rules(provisioning.rule_groups))
    failed = check.failures(results, expect_data=expect_data)
    counts = check.summary(results)
    if failed:
        table = Table("where", "problem", title="failed")
        for where, why in failed:
            table.add_row(where, why)
        out.print(table)
        raise CheckFailed(f"{len(failed)} of {counts['queries']} queries or panels failed (see the table above)")
    out.print(
        f"dashboards check: {counts['queries']} queries ran against {settings.url}/{settings.db}, "
        f"{counts['empty']} returned no series"
    )


def _warn_old_variable(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """GRAFANA_URL/GRAFANA_TOKEN predate the SMARTCITY_* scheme: still read, with a warning that names the new one."""
    new, old = param.envvar  # type: ignore[misc]
    if ctx.get_parameter_source(param.name or "") is ParameterSource.ENVIRONMENT and not os.environ.get(new):
        console.print(f"[yellow]warning:[/] {old} is deprecated; set {new} (or [grafana] in smartcity.toml)")
    return value


@dashboards_group.command("push")
@registry_option
@click.option(
    "--url",
    required=True,
    envvar=["SMARTCITY_GRAFANA_URL", "GRAFANA_URL"],
    callback=_warn_old_variable,
    help="Grafana base URL [env: SMARTCITY_GRAFANA_URL].",
)
@click.option(
    "--token",
    required=True,
    envvar=["SMARTCITY_GRAFANA_TOKEN", "GRAFANA_TOKEN"],
    callback=_warn_old_variable,
    help="Service account token (Editor or Admin) [env: SMARTCITY_GRAFANA_TOKEN].",
)
@click.option(
    "--webhook-url",
    envvar="SMARTCITY_ALERT_WEBHOOK_URL",
    help="Webhook of the operators' contact point; without it the contact point and policy are not pushed "
    "[env: SMARTCITY_ALERT_WEBHOOK_URL].",
)
def push_command(registry_paths: Sequence[Path], url: str, token: str, webhook_url: str | None) -> None:
    """Upload folders, dashboards and alert rules to Grafana (overwrites by uid; idempotent)."""
    from dashboards.provisioning import generate
    from dashboards.push import Pusher

    provisioning = generate(registry_from(registry_paths))
    with console.status("pushing") as status:
        report = Pusher(url, token, on_step=lambda s: status.update(f"pushing {s}")).push(provisioning, webhook_url)
    out.print(
        f"dashboards push: {report.folders} folders, {report.dashboards} dashboards, {report.rule_groups} rule groups"
        + (", contact point and policy" if report.contact_point else " (no --webhook-url: contact point not pushed)")
        + f" to {url}"
    )
