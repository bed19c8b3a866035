"""Mosquitto and InfluxDB 1.x run from their Debian binaries with generated configs.

One place knows how to configure and start the two servers. `smartcity stack`
starts them detached with pid files; the test fixtures start them on free
ports in a temp dir and own the processes. Both go through these classes, so
the tests exercise the configuration users run.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from deploy.tls import TlsFiles
from sensors.errors import SmartcityError

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

# Mosquitto keeps at most this many QoS 1 messages for an offline persistent
# session (its default of 1000 silently drops the rest). One hour of ingest
# outage at the demo's 250 msg/s is 900,000 messages.
MQTT_MAX_QUEUED_MESSAGES = 1_000_000
# Unacknowledged messages in flight per client. Ingest acknowledges only after
# an fsync (every <= 50 ms), so the default of 20 would cap it near 400 msg/s.
MQTT_MAX_INFLIGHT_MESSAGES = 5_000
# Larger packets are refused by the broker; smaller ones reach ingest, which
# rejects payloads over the contract's 16 KiB with a reason.
MQTT_MAX_PACKET_BYTES = 2 * 1024 * 1024
# Mosquitto writes its in-memory state to disk at this interval and on a clean shutdown.
MQTT_AUTOSAVE_INTERVAL_S = 10


class ServerError(SmartcityError):
    """A server binary is missing, its port is busy, or it did not come up."""


def find_binary(name: str) -> str:
    """Path of a server binary; Debian puts mosquitto in /usr/sbin, often not on a user's PATH."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise ServerError(f"{name} not found: install it with 'bash deploy/install-system-deps.sh'")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited but not been reaped; treat it as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_runs(pid: int, binary: str) -> bool:
    """True if `pid` is alive and is `binary` (guards against a recycled pid)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(cmdline).name == Path(binary).name


@dataclass(kw_only=True)
class ServerProcess:
    """A server started from a binary with a config file, detached or owned by the caller."""

    name: str
    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    @property
    def binary(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def busy_ports(self) -> list[int]:
        return [self.port]

    def start(self, detach: bool = False) -> None:
        """Write the config, start the binary and wait until it answers.

        With `detach`, the server outlives this process (own session, pid file);
        otherwise the caller owns it and must `stop()` it.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for port in self.busy_ports():
            if not port_is_free(port):
                raise ServerError(f"{self.name}: port {port} is already in use")
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
            )
        self.pid = self.proc.pid
        if detach:
            self.pid_path.write_text(f"{self.pid}\n")
        self.wait_ready()
        logger.info("%s started: pid %s, port %s", self.name, self.pid, self.port)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with code {self.proc.returncode} at start; "
                    f"last log line: {self.last_log_line()}"
                )
            if self.is_ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} did not answer on port {self.port} within {timeout_s:.0f} s")

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def running_pid(self) -> int | None:
        """The pid of this server if it is running, from the owned process or the pid file."""
        if self.proc is not None:
            return self.proc.pid if self.proc.poll() is None else None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_runs(pid, self.binary) else None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout_s`); a no-op if it is not running."""
        pid = self.running_pid()
        if pid is not None:
            os.kill(pid, sig)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.proc is not None:
                    if self.proc.poll() is not None:
                        break
                elif not pid_alive(pid):
                    break
                time.sleep(0.05)
            else:
                logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
                os.kill(pid, signal.SIGKILL)
                if self.proc is not None:
                    self.proc.wait()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait()
        self.proc = None
        self.pid = None
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """`kill -9`: no chance to save state, as in a crash."""
        self.stop(timeout_s=0.0, sig=signal.SIGKILL)


@dataclass(kw_only=True)
class Mosquitto(ServerProcess):
    """Mosquitto with persistence, large queues, raised in-flight limits and no anonymous access."""

    name: str = "mosquitto"
    password_file: Path | None = None
    acl_file: Path | None = None
    # Vendors' listener: MQTT over TLS on all interfaces (the plain `port` is on the loopback only).
    tls_port: int | None = None
    tls_files: TlsFiles | None = None

    @property
    def binary(self) -> str:
        return find_binary("mosquitto")

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def persistence_dir(self) -> Path:
        return self.data_dir / "data"

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def write_config(self) -> None:
        self.persistence_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            render_mosquitto_conf(
                port=self.port,
                persistence_dir=f"{self.persistence_dir}/",
                password_file=str(self.password_file) if self.password_file else None,
                acl_file=str(self.acl_file) if self.acl_file else None,
                # Mosquitto started as root drops to user `mosquitto` and then silently runs
                # without persistence if it cannot write its folder: stay the user who owns it.
                run_as_user=getpass.getuser(),
                tls=self.tls_listener,
            )
        )

    @property
    def tls_listener(self) -> TlsListener | None:
        if self.tls_port is None or self.tls_files is None:
            return None
        f = self.tls_files
        return TlsListener(self.tls_port, str(f.ca_cert), str(f.server_cert), str(f.server_key))

    def busy_ports(self) -> list[int]:
        return [self.port] if self.tls_port is None else [self.port, self.tls_port]

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


@dataclass(frozen=True)
class TlsListener:
    """A Mosquitto listener for MQTT over TLS and the certificate files it serves (deploy/tls.py)."""

    port: int
    cafile: str
    certfile: str
    keyfile: str
    bind_address: str = ""

    def lines(self) -> list[str]:
        return [
            f"listener {self.port} {self.bind_address}".rstrip(),
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            "tls_version tlsv1.2",  # the minimum
        ]


def render_mosquitto_conf(
    *,
    port: int,
    persistence_dir: str,
    password_file: str | None,
    acl_file: str | None,
    run_as_user: str | None,
    bind_address: str = "127.0.0.1",
    log_dest: str = "stdout",
    tls: TlsListener | None = None,
) -> str:
    """The broker settings the delivery promise depends on (see DESIGN.md, 'Broker settings')."""
    lines = [
        "# Generated by smartcity (deploy/servers.py); edits are overwritten.",
        f"listener {port} {bind_address}" if bind_address else f"listener {port}",
        "allow_anonymous false",
    ]
    if password_file:
        lines.append(f"password_file {password_file}")
    if acl_file:
        lines.append(f"acl_file {acl_file}")
    lines += [
        "persistence true",
        f"persistence_location {persistence_dir}",
        f"autosave_interval {MQTT_AUTOSAVE_INTERVAL_S}",
        "persistent_client_expiration 14d",
        f"max_queued_messages {MQTT_MAX_QUEUED_MESSAGES}",
        f"max_inflight_messages {MQTT_MAX_INFLIGHT_MESSAGES}",
        f"max_packet_size {MQTT_MAX_PACKET_BYTES}",
        f"log_dest {log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages false",
    ]
    if run_as_user:
        lines.append(f"user {run_as_user}")
    if tls is not None:
        # Listener options (cafile, max_connections, ...) apply to the listener line above them:
        # the TLS listener comes last, so what precedes it configures the plain listener.
        lines += tls.lines()
    return "\n".join(lines) + "\n"


@dataclass(kw_only=True)
class InfluxDB(ServerProcess):
    """InfluxDB 1.x (`influxd`) with HTTP auth, its RPC port moved off 8088 and phoning home off."""

    name: str = "influxdb"
    rpc_port: int = 0
    auth_enabled: bool = True

    @property
    def binary(self) -> str:
        return find_binary("influxd")

    @property
    def config_path(self) -> Path:
        return self.data_dir / "influxdb.conf"

    def busy_ports(self) -> list[int]:
        return [self.port, self.rpc_port]

    def command(self) -> list[str]:
        return [self.binary, "-config", str(self.config_path)]

    def write_config(self) -> None:
        d = self.data_dir
        self.config_path.write_text(
            f"""# Generated by smartcity (deploy/servers.py); edits are overwritten.
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = "{d}/meta"
  logging-enabled = false

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {"true" if self.auth_enabled else "false"}
  log-enabled = false

[continuous_queries]
  log-enabled = false

[subscriber]
  enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/ping", timeout=0.5) as resp:
                return bool(resp.status == 204)
        except (OSError, urllib.error.URLError):
            return False

    def ensure_admin(self, user: str, password: str) -> None:
        """Create the admin user. InfluxDB 1.x allows this one statement without auth while no user exists."""
        if not self.auth_enabled:
            return
        from storage.errors import QueryError
        from storage.query import QueryClient, ident
        from storage.settings import InfluxSettings

        settings = InfluxSettings(url=self.base_url, username=user, password=password)
        try:
            with QueryClient(settings) as client:
                client.execute(
                    "CREATE USER {user} WITH PASSWORD {password} WITH ALL PRIVILEGES",
                    {"user": ident(user), "password": password},
                )
        except QueryError as err:
            raise ServerError(f"influxdb: creating admin user failed: {err}") from err


def basic_auth(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
