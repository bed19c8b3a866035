"""Health checks of the broker and the database, as `smartcity stack status` reports them."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from deploy.servers import basic_auth


def mqtt_health(host: str, port: int, user: str, password: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Connect with MQTT 5 and credentials; healthy when the broker accepts the connection."""
    connected = threading.Event()
    outcome: dict[str, str] = {}

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        outcome["reason"] = str(reason)
        connected.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = on_connect
    started = time.monotonic()
    try:
        client.connect(host, port, keepalive=10)
    except OSError as err:
        return False, f"connect failed: {err}"
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            return False, f"no CONNACK within {timeout_s:.0f} s"
        reason = outcome.get("reason", "")
        if reason != "Success":
            return False, f"connection refused: {reason}"
        return True, f"MQTT 5 connect as {user} ok ({(time.monotonic() - started) * 1000:.0f} ms)"
    finally:
        client.disconnect()
        client.loop_stop()


def influx_health(base_url: str, user: str, password: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """`/ping` answers 204 and an authenticated `SHOW DATABASES` succeeds."""
    try:
        with urllib.request.urlopen(f"{base_url}/ping", timeout=timeout_s) as resp:
            version = resp.headers.get("X-Influxdb-Version", "?")
        request = urllib.request.Request(f"{base_url}/query?q=SHOW+DATABASES")
        request.add_header("Authorization", basic_auth(user, password))
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.HTTPError as err:
        return False, f"HTTP {err.code} from {err.url}"
    except OSError as err:
        return False, f"unreachable: {err}"
    return True, f"InfluxDB {version}: ping and authenticated query ok"
