"""The consumer in-process against the session's Mosquitto: acknowledgements and connection generations."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from ingest.consumer import Consumer, Pending
from ingest.metrics import Metrics
from ingest.settings import IngestSettings, MqttSettings
from ingest.spool import StreamWriter
from sensors.contract import Contract
from sensors.registry import default_registry
from tests.ingest.helpers import Publisher, messages, wait_until
from tests.servers import StackHandle

pytestmark = pytest.mark.integration


def consumer(stack: StackHandle, home: Path, client_id: str) -> Consumer:
    settings = IngestSettings(
        home=home,
        client_id=client_id,
        mqtt=MqttSettings(url=f"mqtt://ingest:{stack.mqtt_password('ingest')}@127.0.0.1:{stack.mqtt_port}"),
    )
    spool: StreamWriter[Pending] = StreamWriter(settings.stream_dir, segment_max_bytes=1 << 20, segment_max_age_s=60)
    return Consumer(settings, Contract(default_registry()), spool, Metrics())


def test_a_message_of_a_previous_connection_is_never_acknowledged(stack: StackHandle, tmp_path: Path) -> None:
    first = consumer(stack, tmp_path / "home", "it-generation")
    # A slow disk: the first group commit waits until the connection has been replaced.
    gate = threading.Event()
    real_commit = first.spool.commit

    def slow_commit() -> list[Pending]:
        gate.wait(20)
        return real_commit()

    first.spool.commit = slow_commit  # type: ignore[method-assign]
    first.start()
    wait_until(lambda: first.session_present is not None, 10, "the connection")
    publisher = Publisher(stack)
    publisher.publish(messages(1, slot=30))
    wait_until(lambda: first.metrics.received == 1, 10, "the message")
    first._client._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # the network drops
    # The broker redelivers the unacknowledged message on the new connection.
    wait_until(lambda: first.metrics.received == 2, 20, "the redelivery")
    assert first.metrics.duplicates == 1 and first.metrics.connects == 2
    gate.set()
    wait_until(lambda: first.metrics.commits >= 1, 10, "the commit")
    assert first.metrics.stale_acks == 1, "the copy from the dropped connection is not acknowledged"
    first.stop(5)
    # The copy of the current connection was acknowledged: nothing is left in the session.
    second = consumer(stack, tmp_path / "home", "it-generation")
    second.start()
    wait_until(lambda: second.session_present is not None, 10, "the connection")
    time.sleep(1.5)
    assert second.session_present is True and second.metrics.received == 0
    second.stop(5)
    publisher.close()
