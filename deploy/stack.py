"""`smartcity stack up|down|status`: a local Mosquitto + InfluxDB under SMARTCITY_HOME.

Layout of the state folder (default `./.smartcity`):

    env                      shell `export` lines for the SMARTCITY_* variables (0600)
    stack.json               ports the stack was started with
    secrets/mqtt-users.json  {"user": "password"} for admin, ingest and each vendor (0600)
    secrets/influx-admin.json
    tls/                     ca.crt (what vendors verify the broker with), ca.key, server.crt,
                             server.key (keys 0600), see deploy/tls.py
    mosquitto/               mosquitto.conf, password and ACL files, persistence, log, pid
                             (started as root with a HOME the `mosquitto` user cannot reach, e.g.
                             under /root: /var/lib/smartcity/brokers/<hash of HOME> instead)
    influxdb/                influxdb.conf, meta, data, wal, log, pid

Mosquitto listens with plain MQTT on 127.0.0.1 only (the project's own processes) and
with MQTT over TLS on every interface (vendors, `--mqtt-tls-port`, 8883 by default).

`up` is idempotent: a stack that is already running is left alone. `down`
stops exactly the processes `up` started (pid files, checked against the
binary name) and keeps all data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy import broker_auth
from deploy.acl import registry_acl_rules
from deploy.servers import (
    InfluxDB,
    Mosquitto,
    ServerError,
    broker_owner,
    find_binary,
    free_port,
    unreachable_parent,
)
from deploy.tls import TlsFiles, ensure_certificates, machine_names
from sensors.broker_url import BrokerAddress
from sensors.errors import SmartcityError
from sensors.home import Home
from sensors.registry import Registry, default_registry

logger = logging.getLogger(__name__)

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTT_TLS_PORT = 8883
DEFAULT_INFLUX_PORT = 8086
INFLUX_ADMIN = "admin"
DEFAULT_DB = "smartcity"
# Where a root-started broker keeps its folder when its user cannot reach HOME (see Stack.broker_dir).
BROKER_DIRS_WHEN_ROOT = Path("/var/lib/smartcity/brokers")


@dataclass(frozen=True)
class StackPorts:
    mqtt: int = DEFAULT_MQTT_PORT
    influx: int = DEFAULT_INFLUX_PORT
    influx_rpc: int = 0
    mqtt_tls: int = DEFAULT_MQTT_TLS_PORT


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    port: int
    healthy: bool
    detail: str


class Stack:
    """The local stack rooted at `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home.resolve()

    @property
    def secrets_dir(self) -> Path:
        return Home(self.home).secrets

    @property
    def broker_dir(self) -> Path:
        """The broker's folder: HOME/mosquitto, unless a root-started broker's user could not reach it.

        Started as root, Mosquitto runs as `mosquitto` and must reach its folder; a HOME under a
        private parent (a checkout in /root) gets a folder of its own under /var/lib/smartcity.
        """
        folder = self.home / "mosquitto"
        owner = broker_owner()
        if owner is None or unreachable_parent(folder, owner) is None:
            return folder
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:16]
        return BROKER_DIRS_WHEN_ROOT / digest

    @property
    def env_path(self) -> Path:
        return self.home / "env"

    @property
    def state_path(self) -> Path:
        return self.home / "stack.json"

    @property
    def mqtt_users_path(self) -> Path:
        return Home(self.home).broker_passwords

    @property
    def influx_admin_path(self) -> Path:
        return self.secrets_dir / "influx-admin.json"

    @property
    def tls_files(self) -> TlsFiles:
        return TlsFiles.in_folders(self.home / "tls", self.home / "tls")

    def ports(self) -> StackPorts | None:
        try:
            return StackPorts(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def mosquitto(self, ports: StackPorts) -> Mosquitto:
        mdir = self.broker_dir
        return Mosquitto(
            data_dir=mdir,
            port=ports.mqtt,
            password_file=mdir / "passwd",
            acl_file=mdir / "acl",
            tls_port=ports.mqtt_tls,
            tls_files=self.tls_files,
        )

    def influxdb(self, ports: StackPorts) -> InfluxDB:
        return InfluxDB(data_dir=self.home / "influxdb", port=ports.influx, rpc_port=ports.influx_rpc)

    def mqtt_passwords(self) -> dict[str, str]:
        return json.loads(self.mqtt_users_path.read_text()) if self.mqtt_users_path.exists() else {}

    def influx_admin_password(self) -> str:
        creds = broker_auth.load_or_create_passwords(self.influx_admin_path, [INFLUX_ADMIN])
        return creds[INFLUX_ADMIN]

    def write_broker_auth(self, acl_rules: Mapping[str, Iterable[broker_auth.AclRule]]) -> dict[str, str]:
        """Passwords (kept across runs) and the hashed password + ACL files for every user with rules."""
        passwords = broker_auth.load_or_create_passwords(self.mqtt_users_path, acl_rules.keys())
        mdir = self.broker_dir
        for parent in reversed(mdir.parents):  # /var/lib/smartcity/brokers: passable, not listable
            if not parent.exists():
                parent.mkdir(mode=0o711)
        mdir.mkdir(mode=0o700, exist_ok=True)
        known = {user: pw for user, pw in passwords.items() if user in acl_rules}
        broker_auth.write_private(mdir / "passwd", broker_auth.render_password_file(known))
        broker_auth.write_private(mdir / "acl", broker_auth.render_acl_file(acl_rules))
        # The broker rereads both on SIGHUP as the user it runs as.
        self.mosquitto(self.ports() or StackPorts()).hand_over()
        return passwords

    def up(
        self,
        mqtt_port: int = DEFAULT_MQTT_PORT,
        influx_port: int = DEFAULT_INFLUX_PORT,
        acl_rules: Mapping[str, Iterable[broker_auth.AclRule]] | None = None,
        on_step: Callable[[str], None] = lambda _: None,
        registry: Registry | None = None,
        mqtt_tls_port: int | None = None,
        tls_names: Sequence[str] = (),
    ) -> StackPorts:
        """Start both servers (unless already running) and write the env file; returns the ports in use.

        The broker gets an account per vendor of `registry` (default: the built-in one) limited to
        its own sensors, unless `acl_rules` gives the users explicitly. Its TLS listener is on
        `mqtt_tls_port` (default: the running stack's, else 8883) with a certificate for this
        machine's names and `tls_names`, signed by the stack's CA.
        """
        find_binary("mosquitto")
        find_binary("influxd")
        if not self.home.exists():
            # Others may pass through (a root-started broker runs as `mosquitto`), not list: every
            # entry inside is private to its owner (0700 folders, 0600 files).
            self.home.mkdir(parents=True)
            os.chmod(self.home, 0o711)
        previous = self.ports()
        if previous and (self.mosquitto(previous).running_pid() or self.influxdb(previous).running_pid()):
            tls_port = previous.mqtt_tls if mqtt_tls_port is None else mqtt_tls_port
            if (mqtt_port, tls_port, influx_port) != (previous.mqtt, previous.mqtt_tls, previous.influx):
                raise SmartcityError(
                    f"the stack in {self.home} already runs on ports mqtt {previous.mqtt}, mqtts "
                    f"{previous.mqtt_tls} / influx {previous.influx}; run 'smartcity stack down' first to change them"
                )
            ports = previous
        else:
            rpc = previous.influx_rpc if previous and previous.influx_rpc else free_port()
            tls_port = DEFAULT_MQTT_TLS_PORT if mqtt_tls_port is None else mqtt_tls_port
            ports = StackPorts(mqtt=mqtt_port, influx=influx_port, influx_rpc=rpc, mqtt_tls=tls_port)
        self.state_path.write_text(json.dumps(ports.__dict__) + "\n")

        if acl_rules is None:
            acl_rules = registry_acl_rules(registry if registry is not None else default_registry())
        rules = dict(acl_rules)
        passwords = self.write_broker_auth(rules)

        renewed = ensure_certificates(self.tls_files, [*machine_names(), *tls_names])
        mosquitto = self.mosquitto(ports)
        running = mosquitto.running_pid()
        if running is not None and renewed:
            on_step("the broker's TLS certificate was renewed: 'smartcity stack down' and 'up' serve it")
        if running is None:
            on_step(f"starting mosquitto on port {ports.mqtt}")
            mosquitto.start(detach=True)
        else:
            # Mosquitto rereads its password and ACL files on SIGHUP: new vendors can connect at once.
            os.kill(running, signal.SIGHUP)
        influx = self.influxdb(ports)
        admin_password = self.influx_admin_password()
        if influx.running_pid() is None:
            on_step(f"starting influxdb on port {ports.influx}")
            try:
                influx.start(detach=True)
            except ServerError:
                mosquitto.stop()
                raise
        influx.ensure_admin(INFLUX_ADMIN, admin_password)
        # Database and retention policies (storage.bootstrap: idempotent, ALTERs changed durations).
        from storage.bootstrap import bootstrap
        from storage.settings import InfluxSettings

        bootstrap(
            InfluxSettings(url=influx.base_url, username=INFLUX_ADMIN, password=admin_password, db=DEFAULT_DB),
            on_step=on_step,
        )
        self.write_env(ports, passwords, admin_password)
        return ports

    def write_env(self, ports: StackPorts, passwords: Mapping[str, str], admin_password: str) -> None:
        ingest_pw = passwords.get(broker_auth.INGEST_USER, "")
        values = {
            "SMARTCITY_HOME": str(self.home),
            "SMARTCITY_MQTT_URL": f"mqtt://{broker_auth.INGEST_USER}:{ingest_pw}@127.0.0.1:{ports.mqtt}",
            # For mqtts:// URLs to the TLS listener (port ports.mqtt_tls).
            "SMARTCITY_MQTT_CA_FILE": str(self.tls_files.ca_cert),
            "SMARTCITY_INFLUX_URL": f"http://{INFLUX_ADMIN}:{admin_password}@127.0.0.1:{ports.influx}",
            "SMARTCITY_INFLUX_DB": DEFAULT_DB,
        }
        text = "# Generated by 'smartcity stack up'. Load with: . .smartcity/env\n" + "".join(
            f"export {key}={shlex.quote(value)}\n" for key, value in values.items()
        )
        broker_auth.write_private(self.env_path, text)

    def down(self, on_step: Callable[[str], None] = lambda _: None) -> list[str]:
        """Stop the servers `up` started; returns the names of those that were running."""
        ports = self.ports()
        if ports is None:
            return []
        stopped = []
        for server in (self.influxdb(ports), self.mosquitto(ports)):
            if server.running_pid() is not None:
                on_step(f"stopping {server.name}")
                server.stop()
                stopped.append(server.name)
        return stopped

    def status(self) -> list[ServiceStatus]:
        ports = self.ports()
        if ports is None:
            return []
        from deploy.health import influx_health, mqtt_health

        passwords = self.mqtt_passwords()
        admin_pw = passwords.get(broker_auth.ADMIN_USER, "")
        result = []
        mosquitto = self.mosquitto(ports)
        pid = mosquitto.running_pid()
        listeners = {
            "mosquitto": BrokerAddress("127.0.0.1", ports.mqtt, tls=False),
            "mosquitto (tls)": BrokerAddress("127.0.0.1", ports.mqtt_tls, tls=True, ca_file=self.tls_files.ca_cert),
        }
        for name, address in listeners.items():
            ok, detail = mqtt_health(address, broker_auth.ADMIN_USER, admin_pw) if pid else (False, "not running")
            result.append(ServiceStatus(name, pid, address.port, ok, detail))
        influx = self.influxdb(ports)
        pid = influx.running_pid()
        if pid:
            admin_password = json.loads(self.influx_admin_path.read_text())[INFLUX_ADMIN]
            ok, detail = influx_health(influx.base_url, INFLUX_ADMIN, admin_password)
        else:
            ok, detail = False, "not running"
        result.append(ServiceStatus("influxdb", pid, ports.influx, ok, detail))
        return result
