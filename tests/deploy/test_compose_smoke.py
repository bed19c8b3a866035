"""deploy/compose.yaml brought up without Docker: its commands and health checks run on the Debian binaries.

What a Docker host would do, done with what this machine has:

- `compose.yaml` validates against the official compose-spec JSON Schema (tests/data/);
- `smartcity compose init` writes the files; compose's `${...}` interpolation uses its env file;
- Mosquitto (Debian 2.0.11) runs the generated `mosquitto.conf`, password, ACL and certificate files
  as the uid:gid of the service's `user:`, with container paths and ports moved to a temp folder
  and free ports, through the image's command (deploy/mosquitto/start.sh, with BusyBox's sh as in the image);
- InfluxDB 1.6.7 stands in for the image: auth on, the admin user and database of the service's
  `INFLUXDB_*` environment, as the image's first start creates them;
- each server's health check runs as written (`sh -c`, hosts and ports substituted) with the
  service's environment, and must pass within its `timeout`;
- the `setup`, `ingest-a`, `ingest-b` and `pipeline` services run their `command` with their
  `environment` (compose host names replaced by 127.0.0.1 and the free ports);
- a reading published by a vendor over TLS reaches InfluxDB.

A real Docker host still decides what this cannot: the images' own binaries and entrypoints,
the container network and DNS, volumes and permissions inside the containers, and Grafana.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deploy.compose import ENV_FILE, AlertDelivery, init_compose, read_env_file
from deploy.servers import InfluxDB, basic_auth, build_clientid_plugin, find_binary, free_port
from storage.query import QueryClient, ident
from storage.settings import InfluxSettings
from tests.deploy.composefile import COMPOSE, substitute

pytestmark = pytest.mark.integration

SCHEMA = Path(__file__).parents[1] / "data" / "compose-spec.json"
START_BROKER = COMPOSE.parent / "mosquitto" / "start.sh"  # the broker image's command (its Dockerfile)
VENDOR, SENSOR = "siam-airsense", "pkt-aq-001"
TOPIC = f"smartcity/v1/phuket/air_quality/{SENSOR}"


@dataclass
class Deployment:
    """The compose services as local processes; `ports` maps a container port to the free port used."""

    root: Path
    out: Path
    env: dict[str, str]
    compose: dict[str, Any]
    ports: dict[int, int]
    influx: InfluxDB
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def service(self, name: str) -> dict[str, Any]:
        service: dict[str, Any] = self.compose["services"][name]
        return service

    def localize(self, text: str) -> str:
        """Container paths, compose host names and container ports as they are on this machine."""
        text = text.replace("/mosquitto/config", str(self.out / "mosquitto"))
        text = text.replace("/mosquitto/data", str(self.out / "mosquitto-data"))
        text = text.replace("/mosquitto/plugins", str(self.root / "plugins"))  # built into the image
        for host, port in (("mosquitto", 1883), ("influxdb", 8086)):
            text = text.replace(f"@{host}:{port}", f"@127.0.0.1:{self.ports[port]}")
            text = text.replace(f"//{host}:{port}", f"//127.0.0.1:{self.ports[port]}")
        text = re.sub(r"-p (1883|8883)\b", lambda m: f"-p {self.ports[int(m[1])]}", text)
        return re.sub(r"-port 8086\b", f"-port {self.ports[8086]}", text)

    def environment(self, name: str) -> dict[str, str]:
        env = {k: self.localize(str(v)) for k, v in self.service(name).get("environment", {}).items()}
        if env.get("SMARTCITY_HOME") == "/data":  # the `spool` volume
            env["SMARTCITY_HOME"] = str(self.root / "spool")
        return env

    def healthcheck(self, name: str) -> subprocess.CompletedProcess[str]:
        check = self.service(name)["healthcheck"]
        kind, command = check["test"][0], check["test"][1]
        assert kind == "CMD-SHELL", f"{name}: health check form {kind} is not run here"
        timeout_s = float(check["timeout"].removesuffix("s"))
        env = {"PATH": os.environ["PATH"] + ":/usr/sbin", **self.environment(name)}
        return subprocess.run(
            ["sh", "-c", self.localize(command)], env=env, capture_output=True, text=True, timeout=timeout_s
        )

    def run_service(self, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.environment(name)}
        env.pop("SMARTCITY_REGISTRY", None)
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        # -v only adds the log lines the test waits for ("subscribed to").
        command = [sys.executable, "-m", "deploy.cli", "-v", *self.service(name)["command"]]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.root)  # fmt: skip
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, text: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s  # a loaded 2-core machine takes long to import Beam
        while text not in self.log(name):
            proc = self.procs[name]
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)[-2000:]}"
            assert time.monotonic() < deadline, f"{name}: no {text!r} within {timeout_s:.0f} s:\n{self.log(name)}"
            time.sleep(0.2)

    def influx_query(self, statement: str, user: str, password: str) -> tuple[int, dict[str, Any]]:
        body = urllib.parse.urlencode({"q": statement, "db": "smartcity"}).encode()
        request = urllib.request.Request(f"{self.influx.base_url}/query", data=body, method="POST")
        request.add_header("Authorization", basic_auth(user, password))
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")


def start_broker(d: Deployment) -> subprocess.Popen[bytes]:
    """The generated mosquitto.conf with container paths and ports moved here, run as the service's `user:`."""
    conf = (d.out / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883\n", f"listener {d.ports[1883]} 127.0.0.1\n")
    conf = conf.replace("listener 8883\n", f"listener {d.ports[8883]} 127.0.0.1\n")
    assert f"listener {d.ports[8883]} " in conf and f"listener {d.ports[1883]} " in conf, conf
    local = d.root / "mosquitto.conf"
    local.write_text(d.localize(conf))
    local.chmod(0o644)
    start = shutil.copy(START_BROKER, d.root / "start.sh")  # readable by the broker's user wherever the checkout is
    uid, gid = (int(part) for part in d.service("mosquitto")["user"].split(":"))
    switch = {"user": uid, "group": gid, "extra_groups": []} if os.getuid() == 0 else {}
    if not switch:
        assert (uid, gid) == (os.getuid(), os.getgid()), "compose init records the user that owns the files"
    log = open(d.root / "mosquitto.log", "ab")  # noqa: SIM115
    env = {**os.environ, "PATH": f"{Path(find_binary('mosquitto')).parent}:{os.environ['PATH']}"}
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox is missing: deploy/install-system-deps.sh installs it"
    proc = subprocess.Popen([busybox, "sh", str(start), str(local)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, **switch)  # type: ignore[call-overload]  # fmt: skip
    log.close()
    return proc


def start_influx(d: Deployment) -> None:
    """InfluxDB 1.6.7 as the image's first start leaves it: auth on, its admin user and database."""
    d.influx.start()
    env = d.environment("influxdb")
    assert env["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    d.influx.ensure_admin(env["INFLUXDB_ADMIN_USER"], env["INFLUXDB_ADMIN_PASSWORD"])
    admin = InfluxSettings(url=d.influx.base_url, username=env["INFLUXDB_ADMIN_USER"],
                           password=env["INFLUXDB_ADMIN_PASSWORD"])  # fmt: skip
    with QueryClient(admin) as client:
        client.execute("CREATE DATABASE {db}", {"db": ident(env["INFLUXDB_DB"])}, db="")


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    # Not under pytest's 0700 temp folder: the broker may run as another uid (the service's `user:`).
    root = Path(tempfile.mkdtemp(prefix="smartcity-compose-"))
    root.chmod(0o755)
    out = root / "compose"
    # What deploy/mosquitto/Dockerfile compiles into the image, from the same source.
    plugins = root / "plugins"
    plugins.mkdir(mode=0o755)
    build_clientid_plugin(plugins)
    init_compose(out, alerts=AlertDelivery(webhook_url="https://hooks.example/smartcity"))
    env = read_env_file(out / ENV_FILE)
    compose = yaml.safe_load(substitute(COMPOSE.read_text(), env))
    ports = {1883: free_port(), 8883: free_port(), 8086: free_port()}
    influx = InfluxDB(data_dir=root / "influxdb", port=ports[8086], rpc_port=free_port())
    d = Deployment(root, out, env, compose, ports, influx)
    broker = start_broker(d)
    d.procs["mosquitto"] = broker
    try:
        start_influx(d)
        yield d
    finally:
        for name, proc in reversed(d.procs.items()):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if name != "mosquitto":
                print(f"--- {name}\n{d.log(name)[-1500:]}")
        influx.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_compose_file_is_valid_compose_spec() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load(COMPOSE.read_text())), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_published_ports_bind_loopback_except_vendor_tls(deployment: Deployment) -> None:
    published = {name: s.get("ports", []) for name, s in deployment.compose["services"].items()}
    assert published["mosquitto"] == ["8883:8883"], "vendors: TLS only; plain 1883 stays on the compose network"
    assert published["influxdb"] == ["127.0.0.1:8086:8086"]
    assert published["grafana"] == ["127.0.0.1:3000:3000"]
    assert all(not ports for name, ports in published.items() if name not in ("mosquitto", "influxdb", "grafana"))
    everywhere = {**deployment.env, "SMARTCITY_PUBLISH_ADDRESS": "0.0.0.0"}
    opted_out = yaml.safe_load(substitute(COMPOSE.read_text(), everywhere))
    assert opted_out["services"]["grafana"]["ports"] == ["0.0.0.0:3000:3000"]


def test_server_health_checks_pass_as_written(deployment: Deployment) -> None:
    for name in ("mosquitto", "influxdb"):
        deadline = time.monotonic() + 30
        while (result := deployment.healthcheck(name)).returncode != 0:
            assert time.monotonic() < deadline, f"{name} health check: exit {result.returncode} {result.stderr}"
            time.sleep(1)


def test_a_broker_database_a_power_cut_damaged_is_kept_aside_and_the_broker_starts(deployment: Deployment) -> None:
    """A power cut during a save can leave mosquitto.db all null bytes, and Mosquitto then exits at every
    start ("Couldn't open database": eclipse-mosquitto/mosquitto#2639, #3160), so `restart: unless-stopped`
    alone would keep the broker down. The image's command (deploy/mosquitto/start.sh) keeps the file aside
    and starts the broker without it."""
    d = deployment
    broker = d.procs["mosquitto"]
    broker.terminate()
    assert broker.wait(20) == 0
    db = d.out / "mosquitto-data" / "mosquitto.db"
    size = db.stat().st_size  # saved at the stop
    db.write_bytes(bytes(size))
    d.procs["mosquitto"] = start_broker(d)
    deadline = time.monotonic() + 30
    while (result := d.healthcheck("mosquitto")).returncode != 0:
        assert time.monotonic() < deadline, f"the broker did not start: {result.stderr}\n{d.log('mosquitto')[-2000:]}"
        time.sleep(1)
    assert [p.read_bytes() for p in db.parent.glob("mosquitto.db.damaged-*")] == [bytes(size)]
    log = d.log("mosquitto")
    assert "Couldn't open database" in log and "starting it without its persistence file" in log


def test_services_run_and_a_reading_published_over_tls_reaches_influxdb(deployment: Deployment) -> None:
    d = deployment
    setup = d.run_service("setup")
    assert setup.wait(120) == 0, d.log("setup")
    for name in ("ingest-a", "ingest-b"):
        d.run_service(name)
    d.run_service("pipeline")
    for name in ("ingest-a", "ingest-b"):
        d.wait_log(name, "subscribed to")

    ts_ms = int(time.time() * 1000)
    password = json.loads((d.out / "mqtt-users.json").read_text())[VENDOR]
    payload = json.dumps({"ts": ts_ms, "values": {"pm25": 17.5}})
    publish = subprocess.run(
        ["mosquitto_pub", "-h", "localhost", "-p", str(d.ports[8883]), "--cafile", str(d.out / "mosquitto/tls/ca.crt"),
         "-u", VENDOR, "-P", password, "-i", f"{VENDOR}-{uuid.uuid4().hex[:6]}", "-V", "mqttv5", "-q", "1",
         "-t", TOPIC, "-m", payload],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert publish.returncode == 0, publish.stderr

    env = d.environment("influxdb")
    query = f'SELECT pm25 FROM "raw"."air_quality" WHERE sensor_id = \'{SENSOR}\' AND time = {ts_ms}ms'
    deadline = time.monotonic() + 60
    while True:
        _, answer = d.influx_query(query, env["INFLUXDB_ADMIN_USER"], env["INFLUXDB_ADMIN_PASSWORD"])
        if answer.get("results", [{}])[0].get("series"):
            assert answer["results"][0]["series"][0]["values"][0][1] == 17.5
            break
        assert time.monotonic() < deadline, f"the reading did not reach InfluxDB: {answer}\n{d.log('ingest-a')}"
        time.sleep(0.5)
    assert d.procs["pipeline"].poll() is None, d.log("pipeline")


def test_ingest_influx_user_may_write_but_not_read_or_drop(deployment: Deployment) -> None:
    d = deployment
    if "setup" not in d.procs:
        assert d.run_service("setup").wait(120) == 0, d.log("setup")
    url = urllib.parse.urlsplit(d.environment("ingest-a")["SMARTCITY_INFLUX_URL"])
    user, password = url.username or "", url.password or ""
    assert user and user != "admin"
    write = urllib.request.Request(
        f"{d.influx.base_url}/write?db=smartcity&rp=raw&precision=ms",
        data=f"probe value=1 {int(time.time() * 1000)}".encode(),
        method="POST",
    )
    write.add_header("Authorization", basic_auth(user, password))
    with urllib.request.urlopen(write, timeout=30) as resp:
        assert resp.status == 204
    for statement in ('SELECT * FROM "raw"."probe"', "DROP MEASUREMENT probe", "DROP DATABASE smartcity"):
        status, answer = d.influx_query(statement, user, password)
        error = answer.get("error") or answer.get("results", [{}])[0].get("error", "")
        assert status == 403 or "not authorized" in error, f"{user} ran {statement!r}: {status} {answer}"
