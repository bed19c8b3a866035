"""Mosquitto and InfluxDB 1.x run from their Debian binaries with generated configs.

One place knows how to start the two servers (the broker's settings themselves are
`deploy/broker_conf.py`'s, shared with the compose files). `smartcity stack`
starts them detached with pid files; the test fixtures start them on free
ports in a temp dir and own the processes. Both go through these classes, so
the tests exercise the configuration users run.
"""

from __future__ import annotations

import getpass
import grp
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy import broker_auth
from deploy.broker_conf import MQTT_AUTOSAVE_INTERVAL, MQTT_AUTOSAVE_ON_CHANGES, TlsListener, render_mosquitto_conf
from deploy.tls import TlsFiles
from sensors.errors import SmartcityError

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

# The client-id plugin (deploy/mosquitto/smartcity_clientid.c): these accounts may use any client id,
# every other account only `<account>` and `<account>-...`.
PLUGIN_SOURCE = Path(__file__).parent / "mosquitto" / "smartcity_clientid.c"
PLUGIN_NAME = "smartcity_clientid.so"
# A broker started as root drops to this user (the Debian package's); it must own its persistence.
BROKER_USER_WHEN_ROOT = "mosquitto"


class ServerError(SmartcityError):
    """A server binary is missing, its port is busy, or it did not come up."""


def find_binary(name: str) -> str:
    """Path of a server binary; Debian puts mosquitto in /usr/sbin, often not on a user's PATH."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise ServerError(f"{name} not found: install it with 'bash deploy/install-system-deps.sh'")
    return found


def free_port() -> int:
    """A free port below the kernel's ephemeral range. A port in that range can be taken, while its server
    is down, by a client reconnecting to it: the kernel may give the client that very port as its source
    and the client connects to itself (TCP self-connect), so the server cannot restart there."""
    first_ephemeral = _first_ephemeral_port()
    for _ in range(100):
        port = _PORTS.randrange(FIRST_FREE_PORT, first_ephemeral)
        if port_is_free(port):
            return port
    raise ServerError(f"no free port in {FIRST_FREE_PORT}-{first_ephemeral - 1} after 100 tries")


FIRST_FREE_PORT = 10_000  # below: well-known services' ports
_PORTS = random.SystemRandom()  # not the global generator: tests seed it, and parallel workers would pick alike


def _first_ephemeral_port() -> int:
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32_768  # Linux's default
    return max(first, FIRST_FREE_PORT + 1_000)


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
        os.chmod(self.data_dir, 0o700)
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
                umask=0o077,  # its data, persistence and meta files are for its owner only
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
                    f"last log line: {self.last_log_line()}{self.start_failure_hint()}"
                )
            if self.is_ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} did not answer on port {self.port} within {timeout_s:.0f} s")

    def start_failure_hint(self) -> str:
        """What the operator can do about a failed start, from the log; empty if nothing is known."""
        return ""

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
    """Mosquitto with persistence, bounded queues, client ids tied to accounts and no anonymous access."""

    name: str = "mosquitto"
    password_file: Path | None = None
    acl_file: Path | None = None
    # Vendors' listener: MQTT over TLS on all interfaces (the plain `port` is on the loopback only).
    tls_port: int | None = None
    tls_files: TlsFiles | None = None
    trusted_users: tuple[str, ...] = broker_auth.TRUSTED_USERS
    autosave_on_changes: bool = MQTT_AUTOSAVE_ON_CHANGES
    autosave_interval: int = MQTT_AUTOSAVE_INTERVAL
    extra_settings: tuple[str, ...] = ()  # more mosquitto.conf lines (the benchmarks' `sys_interval`)

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
        plugin = build_clientid_plugin(self.data_dir)
        tls_copies = self.copy_tls_files()
        owner = broker_owner()
        if owner is not None:
            # Started as root: Mosquitto drops to `owner` before it opens its files, and without
            # write access to its folder it would run without persistence, silently.
            require_reachable(self.data_dir, owner)
            self.hand_over([self.data_dir, self.persistence_dir, *self.persistence_dir.iterdir(), *tls_copies])
        for folder in (self.data_dir, self.persistence_dir):
            os.chmod(folder, 0o700)
        self.config_path.write_text(
            render_mosquitto_conf(
                port=self.port,
                persistence_dir=f"{self.persistence_dir}/",
                password_file=str(self.password_file) if self.password_file else None,
                acl_file=str(self.acl_file) if self.acl_file else None,
                run_as_user=owner.pw_name if owner is not None else getpass.getuser(),
                clientid_plugin=str(plugin),
                trusted_users=self.trusted_users,
                autosave=(self.autosave_on_changes, self.autosave_interval),
                tls=self.tls_listener,
            )
            + "".join(f"{line}\n" for line in self.extra_settings)
        )
        os.chmod(self.config_path, 0o600)

    def hand_over(self, paths: Sequence[Path] = ()) -> None:
        """As root, give `paths` and the password and ACL files to the user the broker runs as."""
        owner = broker_owner()
        if owner is None:
            return
        for path in [*paths, *(p for p in (self.password_file, self.acl_file) if p is not None)]:
            if path.exists():
                os.chown(path, owner.pw_uid, owner.pw_gid)

    @property
    def tls_dir(self) -> Path:
        """The broker's own copy of its certificate and key (the CA's key never comes here)."""
        return self.data_dir / "tls"

    @property
    def tls_listener(self) -> TlsListener | None:
        if self.tls_port is None or self.tls_files is None:
            return None
        d = self.tls_dir
        return TlsListener(self.tls_port, str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key"))

    def copy_tls_files(self) -> list[Path]:
        """Copy the CA certificate and the server's certificate and key beside the broker (0600 in a 0700 folder).

        A root-started Mosquitto drops to its user before it reads the key, so that user must own
        the copy; the originals, next to the CA's key, stay the stack owner's.
        """
        if self.tls_files is None or self.tls_port is None:
            return []
        self.tls_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.tls_dir, 0o700)
        f = self.tls_files
        copies = []
        for source, name in ((f.ca_cert, "ca.crt"), (f.server_cert, "server.crt"), (f.server_key, "server.key")):
            target = self.tls_dir / name
            target.unlink(missing_ok=True)
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            copies.append(target)
        return [self.tls_dir, *copies]

    def busy_ports(self) -> list[int]:
        return [self.port] if self.tls_port is None else [self.port, self.tls_port]

    def start_failure_hint(self) -> str:
        # A power cut during a save can damage the persistence file, and Mosquitto then exits at every
        # start (eclipse-mosquitto/mosquitto#2639). The compose image moves it aside itself (deploy/mosquitto/start.sh).
        if "Couldn't open database" not in self.last_log_line():
            return ""
        return (
            f" (its persistence file {self.persistence_dir / 'mosquitto.db'} is damaged or unreadable: move it "
            "aside to start without the offline sessions and queued messages it holds)"
        )

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


def broker_owner() -> pwd.struct_passwd | None:
    """The user a root-started broker runs as; None when the stack is not started as root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(BROKER_USER_WHEN_ROOT)
    except KeyError:
        raise ServerError(
            f"started as root, mosquitto must run as user {BROKER_USER_WHEN_ROOT!r}, which does not exist: "
            "install Debian's mosquitto package, or start the stack as a normal user"
        ) from None


def unreachable_parent(folder: Path, user: pwd.struct_passwd) -> Path | None:
    """The first parent of `folder` that `user` may not pass through (no execute bit for it), if any."""
    groups = {user.pw_gid, *(g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem)}
    for parent in reversed(folder.resolve().parents):
        st = parent.stat()
        allowed = (
            st.st_mode & stat.S_IXOTH
            or (st.st_uid == user.pw_uid and st.st_mode & stat.S_IXUSR)
            or (st.st_gid in groups and st.st_mode & stat.S_IXGRP)
        )
        if not allowed:
            return parent
    return None


def require_reachable(folder: Path, user: pwd.struct_passwd) -> None:
    """Fail with the folder to fix if `user` cannot reach `folder` (execute bit on every parent)."""
    parent = unreachable_parent(folder, user)
    if parent is not None:
        st = parent.stat()
        raise ServerError(
            f"mosquitto runs as user {user.pw_name!r} when started as root and cannot reach {folder}: "
            f"{parent} is mode {stat.S_IMODE(st.st_mode):04o}; put SMARTCITY_HOME where that user can "
            "reach it (e.g. under /var/lib or /srv), or start the stack as a normal user"
        )


def build_clientid_plugin(folder: Path) -> Path:
    """Compile the client-id plugin into `folder` unless an up-to-date build is there; returns its path."""
    target = folder / PLUGIN_NAME
    if target.exists() and target.stat().st_mtime >= PLUGIN_SOURCE.stat().st_mtime:
        return target
    compiler = shutil.which("cc")
    if compiler is None:
        raise ServerError("cc not found: run 'bash deploy/install-system-deps.sh'")
    partial = target.with_suffix(".part")
    done = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(PLUGIN_SOURCE)], capture_output=True, text=True
    )
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
        raise ServerError(f"building the broker plugin failed ({first}); run 'bash deploy/install-system-deps.sh'")
    os.chmod(partial, 0o644)
    os.replace(partial, target)
    return target


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
  # /debug/pprof answers without login when on. 1.6 has no switch for /debug/vars and /debug/requests:
  # they stay open on this loopback-only port (docs/deploy.md, 'InfluxDB debug endpoints').
  pprof-enabled = false

[continuous_queries]
  log-enabled = false

[subscriber]
  enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""
        )
        os.chmod(self.config_path, 0o600)

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
