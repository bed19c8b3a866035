"""Handles on a real local stack for tests (see conftest.py)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from deploy import broker_auth
from deploy.servers import InfluxDB, Mosquitto, ServerError, basic_auth, free_port
from deploy.stack import INFLUX_ADMIN, Stack, StackPorts


@dataclass
class StackHandle:
    """A running Mosquitto + InfluxDB started by `Stack.up` in a temp folder."""

    stack: Stack
    ports: StackPorts

    @property
    def home(self) -> Path:
        return self.stack.home

    @property
    def mqtt_port(self) -> int:
        return self.ports.mqtt

    @property
    def mqtt_tls_port(self) -> int:
        return self.ports.mqtt_tls

    @property
    def ca_file(self) -> Path:
        return self.stack.tls_files.ca_cert

    @property
    def influx_port(self) -> int:
        return self.ports.influx

    @property
    def influx_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.influx}"

    @property
    def mosquitto(self) -> Mosquitto:
        let_broker_through(self.home)  # again: another pytest run as root tightens /tmp/pytest-of-root
        return self.stack.mosquitto(self.ports)

    @property
    def influxdb(self) -> InfluxDB:
        return self.stack.influxdb(self.ports)

    def mqtt_password(self, user: str) -> str:
        return self.stack.mqtt_passwords()[user]

    @property
    def influx_admin_password(self) -> str:
        return self.stack.influx_admin_password()

    def env(self, home: Path | None = None) -> dict[str, str]:
        """The SMARTCITY_* variables `stack up` writes to HOME/env, optionally with another home."""
        values: dict[str, str] = {}
        for line in self.stack.env_path.read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                values[key] = value.strip("'")
        if home is not None:
            values["SMARTCITY_HOME"] = str(home)
        return values

    def mqtt_client(self, user: str = broker_auth.ADMIN_USER, client_id: str = "") -> mqtt.Client:
        """A connected MQTT 5 client with its network loop running; the caller disconnects it."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(user, self.mqtt_password(user))
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.connect("127.0.0.1", self.ports.mqtt)
        client.loop_start()
        if not connected.wait(10):
            client.loop_stop()
            raise AssertionError(f"MQTT client {user} did not connect to port {self.ports.mqtt}")
        return client

    def influx_query(self, statement: str, db: str | None = None) -> dict[str, Any]:
        """Run InfluxQL as admin through the raw HTTP API (independent of the code under test)."""
        params = {"q": statement}
        if db:
            params["db"] = db
        request = urllib.request.Request(
            f"{self.influx_url}/query", data=urllib.parse.urlencode(params).encode(), method="POST"
        )
        request.add_header("Authorization", basic_auth(INFLUX_ADMIN, self.influx_admin_password))
        with urllib.request.urlopen(request, timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    def down(self) -> None:
        self.stack.down()


def let_broker_through(path: Path) -> None:
    """As root, let the broker's user pass through pytest's private temp folders (o+x, no listing)."""
    if os.geteuid() != 0:
        return
    temp = Path(tempfile.gettempdir()).resolve()
    for folder in [path, *path.parents]:
        if folder.exists() and folder.is_relative_to(temp) and folder != temp:
            os.chmod(folder, folder.stat().st_mode | stat.S_IXOTH)


def start_stack(home: Path) -> StackHandle:
    """Start a stack on free ports in `home`; a failure fails the test loudly (never skips)."""
    let_broker_through(home)
    stack = Stack(home)
    try:
        ports = stack.up(mqtt_port=free_port(), influx_port=free_port(), mqtt_tls_port=free_port())
    except ServerError as err:
        stack.down()
        pytest.fail(f"could not start the test stack: {err}", pytrace=False)
    return StackHandle(stack, ports)
