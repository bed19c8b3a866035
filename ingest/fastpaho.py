"""The paho MQTT clients of ingest: paho's own, and one with a faster receive path.

`FastClient` overrides paho 2.x internals (`_sock_recv`, `_packet_read`, `_handle_publish`,
`_packet_queue`, ...), so it lives apart from the consumer's logic. paho-mqtt is pinned exactly in
pyproject.toml, `tests/test_private_apis.py` fails first when an upgrade moves one of these names,
and `make_client` checks them before use: on a paho without them (or with `[ingest] fast_client =
false`) ingest runs on paho's own client, slower, with a warning instead of a crash.
"""

from __future__ import annotations

import functools
import inspect
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

logger = logging.getLogger(__name__)

# The paho internals FastClient relies on: methods with their parameters after self ...
PAHO_METHODS = {
    "_sock_recv": ["bufsize"],
    "_packet_read": [],
    "_loop_rc_handle": ["rc"],
    "_handle_publish": [],
    "_packet_queue": ["command", "packet", "mid", "qos", "info"],
    "_update_inflight": [],
}
# ... and attributes set in paho's __init__.
PAHO_ATTRIBUTES = ("_in_packet", "_protocol", "_userdata", "_in_callback_mutex", "_sock", "_msgtime_mutex",
                   "_last_bytes_received", "_out_messages", "_inflight_messages")  # fmt: skip


@functools.cache
def missing_internals() -> tuple[str, ...]:
    """The names of `PAHO_METHODS` and `PAHO_ATTRIBUTES` this paho lacks (none on the pinned version)."""
    missing = [
        name
        for name, parameters in PAHO_METHODS.items()
        if not callable(method := getattr(mqtt.Client, name, None))
        or list(inspect.signature(method).parameters)[1:] != parameters
    ]
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    missing += [name for name in PAHO_ATTRIBUTES if not hasattr(probe, name)]
    packet = getattr(probe, "_in_packet", None)
    if "_in_packet" not in missing and not (isinstance(packet, dict) and {"command", "packet"} <= set(packet)):
        missing.append("_in_packet")
    return tuple(missing)


def make_client(fast: bool, client_id: str) -> IngestClient:
    """The MQTT 5 client for a consumer with manual acknowledgements: `FastClient` when `fast` and this
    paho has every internal it needs, else paho's own client (with a warning when `fast` was asked)."""
    if fast and (missing := missing_internals()):
        logger.warning(
            "paho-mqtt %s lacks %s, which ingest's fast client needs; using paho's own client "
            "(about a third of the throughput); install the paho-mqtt version pyproject.toml pins",
            getattr(mqtt, "__version__", "?"),
            ", ".join(missing),
        )
        fast = False
    elif not fast:
        logger.info("receiving with paho's own client (fast_client = false)")
    kind = FastClient if fast else IngestClient
    return kind(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)


class IngestClient(mqtt.Client):
    """paho's own client, with the one thing the consumer adds: acknowledging a group commit."""

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK (success) for each QoS 1 message id, in order."""
        for mid in mids:
            self.ack(mid, 1)


class FastClient(IngestClient):
    """paho's client with changes to its hot path (paho 2.x internals; see bench/ingest.py).

    - Reads are buffered: paho reads each packet with three or more `recv()`
      calls (type byte, length bytes, body) and handles one packet per
      `select()`; here one `recv()` fetches up to `READ_BYTES` and `loop_read()`
      handles every packet that arrived.
    - A PUBLISH at QoS 0 or 1 without properties (what a QoS 1 subscription
      gets from Mosquitto) is decoded here and handed straight to the consumer,
      skipping paho's generic property parser and callback-filter matching
      (together half of paho's time per message); anything else goes to paho.
      Such packets that lie whole in the read buffer are also cut from it here,
      without paho's byte-by-byte packet reader and its state per packet (the
      largest cost left in paho's loop); a packet split across reads, or any
      other packet, still goes through paho's reader.
    - With `on_publishes` set, those packets reach it as one list per read, as
      `Publish` tuples: no message object and no callback per message.
    - `ack_many()` queues the PUBACKs of a whole group commit as one write
      instead of one queued packet (and one wake-up of the loop) per message.
    """

    READ_BYTES = 65_536
    # recv() calls per loop_read(), so outgoing acknowledgements are not starved under load.
    READS_PER_LOOP = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Takes the PUBLISH packets of each read as one list (None: each goes to `on_message`).
        self.on_publishes: Callable[[list[Publish]], None] | None = None
        self._rbuf = b""
        self._rpos = 0
        self._reads_left = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            if self._reads_left <= 0:
                raise BlockingIOError  # paho keeps the partial packet and resumes after select()
            self._reads_left -= 1
            self._rbuf = super()._sock_recv(self.READ_BYTES)
            self._rpos = 0
            if not self._rbuf:
                return b""  # connection closed
        chunk = self._rbuf[self._rpos : self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        self._reads_left = self.READS_PER_LOOP
        while True:
            if self._in_packet["command"] == 0 and self._rpos < len(self._rbuf):
                self._read_buffered_publishes()
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                if self._rpos < len(self._rbuf):
                    continue  # paho pauses within a large packet; select() cannot see our buffer
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN

    def _read_buffered_publishes(self) -> None:
        """Deliver the PUBLISH packets that lie whole at the read position; stop at anything else."""
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        on_publishes = self.on_publishes
        batch: list[Publish] = []
        while pos < end:
            header = buf[pos]
            if header & 0xF0 != mqtt.PUBLISH:
                break
            # Remaining length: 1-4 bytes, 7 bits each, least significant first.
            length, shift, at = 0, 0, pos + 1
            while at < end and shift <= 21:
                byte = buf[at]
                length |= (byte & 0x7F) << shift
                shift += 7
                at += 1
                if byte < 0x80:
                    break
            else:
                break  # the length continues in the next read (or is malformed: paho decides)
            if at + length > end:
                break
            if on_publishes is None:
                if not self._deliver(header, buf[at : at + length]):
                    break
            else:
                publish = _publish(header, buf[at : at + length], self._protocol)
                if publish is None:
                    break
                batch.append(publish)
            pos = at + length
        if pos != self._rpos:
            self._rpos = pos
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
        if batch:
            assert on_publishes is not None
            with self._in_callback_mutex:
                on_publishes(batch)

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        if not self._deliver(self._in_packet["command"], self._in_packet["packet"]):
            return super()._handle_publish()  # QoS 2, MQTT 3, properties or a malformed packet
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _deliver(self, header: int, packet: bytes | bytearray) -> bool:
        """Hand a PUBLISH (fixed header byte, rest of the packet) at QoS 0 or 1 without properties to
        `on_publishes` or `on_message`; False, untouched, for any other (paho handles it)."""
        publish = _publish(header, packet, self._protocol)
        if publish is None:
            return False
        with self._in_callback_mutex:
            if self.on_publishes is not None:
                self.on_publishes([publish])
            elif (on_message := self.on_message) is not None:
                on_message(self, self._userdata, _Message(*publish))
        return True

    def _update_inflight(self) -> mqtt.MQTTErrorCode:
        # paho calls this on every PUBACK of a reject notice and scans every outgoing message for a
        # queued one: when all of them are in flight, there is none to send.
        if len(self._out_messages) <= self._inflight_messages:
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()

    def reconnect(self) -> mqtt.MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0  # bytes of the old connection
        return super().reconnect()

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK (success) for each QoS 1 message id, in order, as one write."""
        if mids:
            # Each PUBACK is 4 bytes: type, remaining length 2, the message id (big-endian); so one uint32.
            packet = struct.pack(f">{len(mids)}I", *[_PUBACK_BASE | mid for mid in mids])
            self._packet_queue(mqtt.PUBACK, packet, 0, 0)


# A received PUBLISH at QoS 0 or 1 without properties, as `FastClient.on_publishes` gets it:
# (mid (0 at QoS 0), topic, payload, qos, dup, retain). A plain tuple: a NamedTuple's constructor
# is a Python call per message.
Publish = tuple[int, bytes, bytes, int, bool, bool]


def _publish(header: int, packet: bytes | bytearray, protocol: int) -> Publish | None:
    """The PUBLISH of a fixed header byte and the rest of the packet, if it is at QoS 0 or 1, MQTT 5 and
    without properties; None for any other (paho handles it)."""
    qos = (header & 0x06) >> 1
    if len(packet) < 3:
        return None
    end = 2 + int.from_bytes(packet[0:2], "big")
    if qos:
        end += 2
    if qos == 2 or protocol != mqtt.MQTTv5 or len(packet) <= end or packet[end] != 0:
        return None
    return (
        int.from_bytes(packet[end - 2 : end], "big") if qos else 0,
        bytes(packet[2 : end - 2 if qos else end]),
        bytes(packet[end + 1 :]),
        qos,
        bool(header & 0x08),
        bool(header & 0x01),
    )


class _Message(mqtt.MQTTMessage):
    """A received PUBLISH, without what paho's constructor adds for outgoing messages: an
    `MQTTMessageInfo` with a Condition of its own per message (`info`, `state` and `timestamp` are
    not set; the consumer reads none of them)."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, payload: bytes, qos: int, dup: bool, retain: bool) -> None:
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = qos
        self.dup = dup
        self.retain = retain
        self.properties = None


_PUBACK_BASE = (mqtt.PUBACK << 24) | (2 << 16)
