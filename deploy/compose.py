"""`smartcity compose init` and `compose setup`: what deploy/compose.yaml mounts and runs once.

Everything `init` generates stays out of git (under SMARTCITY_HOME by default):

    compose.env           passwords and secrets for Mosquitto, InfluxDB and Grafana (0600), the
                          address InfluxDB and Grafana publish on, and where Grafana sends alerts
                          (webhook URL, optional e-mail and SMTP server), read by `docker compose --env-file`
    mqtt-users.json       plain broker passwords per user, for vendors' onboarding (0600)
    ca.key                the private key of the broker's CA (0600, never mounted)
    mosquitto/mosquitto.conf, passwd, acl (0600)
                          the broker settings the delivery promise depends on, and one
                          account per vendor limited to its own sensors' topics
    mosquitto/tls/ca.crt, server.crt, server.key
                          what vendors verify the broker with, and its certificate and key (0600)
    mosquitto-data/       the broker's persistence, owned by the user the broker runs as

Re-running keeps every existing password and the CA, and regenerates the files, so adding
vendors to the registry never locks anyone out.

`compose setup` runs once in the stack (service `setup`) before ingest and the pipeline:
the database and retention policies, a write-only InfluxDB user for ingest and a read-only
one for Grafana.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import click

from deploy import broker_auth
from deploy.acl import registry_acl_rules
from deploy.broker_conf import TlsListener, render_mosquitto_conf
from deploy.tls import TlsFiles, ensure_certificates
from sensors.cli import home_option, registry_from, registry_option
from sensors.errors import SmartcityError

ENV_FILE = "compose.env"
SERVICE_SECRETS = (
    "SMARTCITY_INFLUX_ADMIN_PASSWORD",
    "SMARTCITY_INFLUX_INGEST_PASSWORD",
    "SMARTCITY_GRAFANA_INFLUX_PASSWORD",
    "SMARTCITY_GRAFANA_ADMIN_PASSWORD",
    "SMARTCITY_GRAFANA_SECRET_KEY",
)
# Where InfluxDB and Grafana publish their ports; 0.0.0.0 (--publish-address) opts into every interface.
DEFAULT_PUBLISH_ADDRESS = "127.0.0.1"
DEFAULT_GRAFANA_ROOT_URL = "http://localhost:3000/"
# The broker's plain listener serves the compose network only (not published); vendors use TLS.
PLAIN_PORT = 1883
TLS_PORT = 8883
# The eclipse-mosquitto image's `mosquitto` user: the broker runs as it when `compose init` ran as root.
IMAGE_MOSQUITTO_UID = 1883
CONFIG_DIR = "/mosquitto/config"
DATA_DIR = "/mosquitto/data"
# Built into the broker image by deploy/mosquitto/Dockerfile.
PLUGIN_PATH = "/mosquitto/plugins/smartcity_clientid.so"
INFLUX_INGEST_USER = "ingest"
INFLUX_GRAFANA_USER = "grafana"


# Where Grafana sends alerts (the contact point in deploy/grafana/provisioning/alerting reads these).
ALERT_WEBHOOK = "SMARTCITY_ALERT_WEBHOOK_URL"
ALERT_EMAIL = "SMARTCITY_ALERT_EMAIL"


@dataclass(frozen=True)
class AlertDelivery:
    """What `compose init` was told about alert delivery; None keeps what compose.env already has."""

    webhook_url: str | None = None
    email: str | None = None  # addresses, `,` or `;` separated
    smtp_host: str | None = None  # host:port of the SMTP server Grafana sends through
    smtp_from: str | None = None
    smtp_user: str | None = None
    smtp_password: str | None = None

    def settings(self, env: dict[str, str]) -> dict[str, str]:
        """The compose.env entries: the webhook is required (alerts must reach someone), e-mail is optional."""
        webhook = self.webhook_url or env.get(ALERT_WEBHOOK)
        if not webhook:
            raise SmartcityError(
                f"compose init: no alert webhook URL: pass --alert-webhook-url URL (or set {ALERT_WEBHOOK}), "
                "the address Grafana posts every alert to"
            )
        parts = urlsplit(webhook)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SmartcityError(f"compose init: alert webhook URL {webhook!r} is not an http(s) URL with a host")
        settings = {ALERT_WEBHOOK: webhook}
        if self.email:
            if not self.smtp_host or not self.smtp_from:
                raise SmartcityError(
                    "compose init: --alert-email needs --smtp-host HOST:PORT and --smtp-from ADDRESS "
                    "(the SMTP server and sender Grafana mails through)"
                )
            settings.update(
                {
                    ALERT_EMAIL: self.email,
                    "GF_SMTP_ENABLED": "true",
                    "GF_SMTP_HOST": self.smtp_host,
                    "GF_SMTP_FROM_ADDRESS": self.smtp_from,
                    "GF_SMTP_USER": self.smtp_user or env.get("GF_SMTP_USER", ""),
                    "GF_SMTP_PASSWORD": self.smtp_password or env.get("GF_SMTP_PASSWORD", ""),
                }
            )
        return settings


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key] = value
    return values


def broker_user() -> tuple[int, int]:
    """The uid:gid the broker container runs as: whoever owns the files, or the image's user for root.

    Mosquitto started as root drops to its own user before it reads the TLS key, so it never
    starts as root: it runs as the owner of the 0600 key.
    """
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    return IMAGE_MOSQUITTO_UID, IMAGE_MOSQUITTO_UID


def init_compose(
    out: Path,
    registry_paths: Sequence[Path] = (),
    host_names: Sequence[str] = (),
    publish_address: str | None = None,
    grafana_root_url: str | None = None,
    alerts: AlertDelivery = AlertDelivery(),
) -> list[Path]:
    """Write (or refresh) the compose secrets, broker files and certificates in `out`; returns the files."""
    registry = registry_from(registry_paths)
    rules = registry_acl_rules(registry)
    broker = out / "mosquitto"
    certs = broker / "tls"
    tls = TlsFiles(certs / "ca.crt", out / "ca.key", certs / "server.crt", certs / "server.key")
    uid, gid = broker_user()
    env = read_env_file(out / ENV_FILE)
    delivery = alerts.settings(env)  # before anything is written: a missing webhook URL stops here
    try:
        out.mkdir(parents=True, exist_ok=True)
        passwords = broker_auth.load_or_create_passwords(out / "mqtt-users.json", rules)
        env.update(delivery)
        for key in SERVICE_SECRETS:
            env.setdefault(key, broker_auth.new_password())
        env["SMARTCITY_MQTT_ADMIN_PASSWORD"] = passwords[broker_auth.ADMIN_USER]
        env["SMARTCITY_MQTT_INGEST_PASSWORD"] = passwords[broker_auth.INGEST_USER]
        env.setdefault("SMARTCITY_COMPOSE_DIR", str(out.resolve()))
        env["SMARTCITY_MQTT_UID"], env["SMARTCITY_MQTT_GID"] = str(uid), str(gid)
        if publish_address is not None or "SMARTCITY_PUBLISH_ADDRESS" not in env:
            env["SMARTCITY_PUBLISH_ADDRESS"] = publish_address or DEFAULT_PUBLISH_ADDRESS
        if grafana_root_url is not None or "SMARTCITY_GRAFANA_ROOT_URL" not in env:
            env["SMARTCITY_GRAFANA_ROOT_URL"] = grafana_root_url or DEFAULT_GRAFANA_ROOT_URL
        header = "# Generated by 'smartcity compose init'. Secrets: never commit this file.\n"
        broker_auth.write_private(out / ENV_FILE, header + "".join(f"{k}={v}\n" for k, v in sorted(env.items())))

        broker.mkdir(exist_ok=True)
        # `mosquitto` is the broker's name on the compose network (healthcheck: localhost).
        ensure_certificates(tls, ["mosquitto", *host_names])
        conf = render_mosquitto_conf(
            port=PLAIN_PORT,
            bind_address="",
            persistence_dir=f"{DATA_DIR}/",
            password_file=f"{CONFIG_DIR}/passwd",
            acl_file=f"{CONFIG_DIR}/acl",
            run_as_user=None,
            clientid_plugin=PLUGIN_PATH,
            trusted_users=broker_auth.TRUSTED_USERS,
            tls=TlsListener(
                TLS_PORT, f"{CONFIG_DIR}/tls/ca.crt", f"{CONFIG_DIR}/tls/server.crt", f"{CONFIG_DIR}/tls/server.key"
            ),
        )
        files = {
            broker / "mosquitto.conf": conf,
            broker / "passwd": broker_auth.render_password_file({u: passwords[u] for u in rules}),
            broker / "acl": broker_auth.render_acl_file(rules),
        }
        for path, text in files.items():
            # Private to the user the broker runs as (the service's `user:`), who owns them.
            broker_auth.write_private(path, text)
        data = out / "mosquitto-data"
        data.mkdir(mode=0o700, exist_ok=True)
        if os.getuid() == 0:
            for path in (tls.server_key, data, *files):
                os.chown(path, uid, gid)
    except OSError as err:
        raise SmartcityError(f"compose init: cannot write {out}: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise SmartcityError(f"{out / 'mqtt-users.json'}: not a JSON object of user -> password: {err}") from err
    return [out / ENV_FILE, out / "mqtt-users.json", tls.ca_key, tls.ca_cert, tls.server_cert, tls.server_key, *files]


def setup_influx(environ: dict[str, str] | None = None) -> list[str]:
    """Database, retention policies and the ingest (write-only) and Grafana (read-only) users; idempotent."""
    from storage.bootstrap import bootstrap
    from storage.errors import StorageError
    from storage.query import QueryClient, ident
    from storage.settings import InfluxSettings

    environ = dict(os.environ if environ is None else environ)
    settings = InfluxSettings.from_env(environ)
    steps: list[str] = []
    users = {
        INFLUX_INGEST_USER: ("WRITE", "SMARTCITY_INFLUX_INGEST_PASSWORD"),
        INFLUX_GRAFANA_USER: ("READ", "SMARTCITY_GRAFANA_INFLUX_PASSWORD"),
    }
    try:
        bootstrap(settings, on_step=steps.append)
        with QueryClient(settings) as client:
            existing = {row[0] for s in client.query("SHOW USERS", db="") for row in s.values}
            for user, (privilege, variable) in users.items():
                password = environ.get(variable)
                if not password:
                    raise SmartcityError(f"{variable} is not set: run 'smartcity compose init'")
                who = {"user": ident(user), "password": password}
                if user in existing:
                    client.execute("SET PASSWORD FOR {user} = {password}", who, db="")
                else:
                    client.execute("CREATE USER {user} WITH PASSWORD {password}", who, db="")
                # Only this one privilege: REVOKE ALL, then GRANT.
                on = {"user": ident(user), "db": ident(settings.db)}
                client.execute("REVOKE ALL PRIVILEGES ON {db} FROM {user}", on, db="")
                client.execute(f"GRANT {privilege} ON {{db}} TO {{user}}", on, db="")
                steps.append(f"user {user}: {privilege.lower()} only on {settings.db}")
    except StorageError as err:
        raise SmartcityError(f"compose setup: {err}") from err
    return steps


@click.group("compose")
def compose_group() -> None:
    """Docker Compose deployment (deploy/compose.yaml)."""


@compose_group.command("init")
@registry_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the generated files [default: HOME/compose].",
)
@click.option(
    "--alert-webhook-url",
    envvar=ALERT_WEBHOOK,
    help=f"Where Grafana posts alerts (required on the first run, then kept) [env: {ALERT_WEBHOOK}].",
)
@click.option("--alert-email", help="Also e-mail alerts to these addresses (`,` separated); needs the SMTP options.")
@click.option("--smtp-host", help="SMTP server Grafana mails through, HOST:PORT (GF_SMTP_HOST).")
@click.option("--smtp-from", help="Sender address of the alert e-mails (GF_SMTP_FROM_ADDRESS).")
@click.option("--smtp-user", help="SMTP user; the password comes from $SMARTCITY_SMTP_PASSWORD.")
@click.option(
    "--mqtt-host",
    "host_names",
    multiple=True,
    help="Host name or IP address vendors reach the broker by (repeatable): the TLS certificate names it.",
)
@click.option(
    "--publish-address",
    help=f"Address InfluxDB and Grafana publish their ports on [default: {DEFAULT_PUBLISH_ADDRESS}, this "
    "machine only]; 0.0.0.0 for every interface (then put TLS in front of them).",
)
@click.option("--grafana-root-url", help=f"Grafana's public URL [default: {DEFAULT_GRAFANA_ROOT_URL}].")
@home_option("the generated files go to HOME/compose unless --out says otherwise")
def init_command(
    registry_paths: Sequence[Path],
    out: Path | None,
    host_names: tuple[str, ...],
    publish_address: str | None,
    grafana_root_url: str | None,
    alert_webhook_url: str | None,
    alert_email: str | None,
    smtp_host: str | None,
    smtp_from: str | None,
    smtp_user: str | None,
    home: Path,
) -> None:
    """Generate the secrets env file, the Mosquitto config, passwords, ACLs and TLS certificates for compose."""
    if publish_address is not None:
        try:
            ipaddress.ip_address(publish_address)
        except ValueError:
            raise click.BadParameter(
                f"{publish_address!r} is not an IP address", param_hint="--publish-address"
            ) from None
    if grafana_root_url is not None and not grafana_root_url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{grafana_root_url!r} is not an http(s) URL", param_hint="--grafana-root-url")
    target = out or home / "compose"
    alerts = AlertDelivery(
        alert_webhook_url, alert_email, smtp_host, smtp_from, smtp_user, os.environ.get("SMARTCITY_SMTP_PASSWORD")
    )
    written = init_compose(target, registry_paths, host_names, publish_address, grafana_root_url, alerts)
    click.echo(f"wrote {len(written)} files to {target}; vendors verify the broker with {written[3]}")
    if alert_email:
        click.echo("e-mail: run 'smartcity dashboards build --alert-email' so the contact point mails too")
    click.echo(f"start: docker compose --env-file {target / ENV_FILE} -f deploy/compose.yaml up -d")


@compose_group.command("setup")
def setup_command() -> None:
    """Inside the stack, once: database, retention policies, write-only ingest and read-only Grafana users.

    Reads SMARTCITY_INFLUX_URL (the admin), SMARTCITY_INFLUX_INGEST_PASSWORD and
    SMARTCITY_GRAFANA_INFLUX_PASSWORD (compose.yaml passes them).
    """
    for step in setup_influx():
        click.echo(step)
