"""The broker as a neighbour: a vendor that borrows client ids, oversized packets, kill -9 of Mosquitto.

- A vendor account connecting with ingest's client id (or another vendor's) is refused, so it can
  neither take over nor erase the session that holds ingest's queue (docs/design.md, 'Client ids').
- A kill -9 of Mosquitto while ingest is behind loses at most the documented bound
  (docs/reliability.md, 'Broker crash').
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.ingest.helpers import IngestProcess, Publisher, ingest_env, messages, wait_for_points
from tests.servers import StackHandle

pytestmark = pytest.mark.system

VENDOR = "siam-airsense"
OTHER_VENDOR = "binwise"


def connect_as(stack: StackHandle, user: str, client_id: str) -> str:
    """Connect with a clean start and no session expiry (what erases a session); returns the reason code."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, stack.mqtt_password(user))
    answered = threading.Event()
    reason: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, code: object, _p: object) -> None:
        reason.append(str(code))
        answered.set()

    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client.connect("127.0.0.1", stack.mqtt_port, clean_start=True, properties=properties)
    client.loop_start()
    try:
        assert answered.wait(10), f"no CONNACK for {user} as {client_id}"
    finally:
        client.disconnect()
        client.loop_stop()
    return reason[0]


def test_a_vendor_cannot_take_over_or_erase_ingests_session(private_stack: StackHandle, tmp_path: Path) -> None:
    stack = private_stack
    env = ingest_env(stack, tmp_path / "home")  # the default client id, smartcity-ingest
    client_id = "smartcity-ingest"
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("subscribed to")
        assert ingest.terminate() == 0
    # Ingest is offline: its persistent session queues what is published meanwhile.
    items = messages(500, slot=1)
    publisher = Publisher(stack)
    publisher.publish(items)
    publisher.close()

    answers = {
        client_id: connect_as(stack, VENDOR, client_id),  # ingest's
        f"{OTHER_VENDOR}-gw-01": connect_as(stack, VENDOR, f"{OTHER_VENDOR}-gw-01"),  # another vendor's
        f"{VENDOR}-gw-01": connect_as(stack, VENDOR, f"{VENDOR}-gw-01"),  # its own namespace
    }

    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        wait_for_points(stack, items, timeout_s=30)  # 0 of 500 lost
        assert ingest.terminate() == 0
    assert f"had no session for {client_id}" not in ingest.log.read_text()
    assert answers == {
        client_id: "Not authorized",
        f"{OTHER_VENDOR}-gw-01": "Not authorized",
        f"{VENDOR}-gw-01": "Success",
    }
