"""Health checks of the broker and the database, as `smartcity stack status` reports them."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sensors.broker_url import BrokerAddress
from sensors.errors import SmartcityError
from storage.health import check
from storage.settings import DEFAULT_DB, InfluxSettings


def mqtt_health(address: BrokerAddress, user: str, password: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Connect with MQTT 5 and credentials (over TLS for an mqtts address); healthy when the broker accepts."""
    connected = threading.Event()
    outcome: dict[str, str] = {}

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        outcome["reason"] = str(reason)
        connected.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = on_connect
    address.apply_tls(client)
    started = time.monotonic()
    try:
        client.connect(address.host, address.port, keepalive=10)
    except OSError as err:
        return False, f"connect failed: {err}"
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            return False, f"no CONNACK within {timeout_s:.0f} s"
        reason = outcome.get("reason", "")
        if reason != "Success":
            return False, f"connection refused: {reason}"
        how = "MQTT 5 connect over TLS" if address.tls else "MQTT 5 connect"
        return True, f"{how} as {user} ok ({(time.monotonic() - started) * 1000:.0f} ms)"
    finally:
        client.disconnect()
        client.loop_stop()


def influx_health(
    base_url: str, user: str, password: str, timeout_s: float = 5.0, db: str = DEFAULT_DB
) -> tuple[bool, str]:
    """`/ping` answers, and a point written to `{db}`'s raw retention policy reads back (storage.health)."""
    try:
        settings = InfluxSettings(url=base_url, username=user, password=password, db=db, timeout_s=timeout_s)
    except SmartcityError as err:
        return False, str(err)
    report = check(settings)
    return report.ok, report.detail
