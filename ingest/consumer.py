"""MQTT 5 consumer: persistent session, QoS 1, and an acknowledgement only after the spool's fsync.

Threads and what they own:

- paho's network loop calls `_on_publishes` with the messages of each read: decode with the contract, append
  the readings (or the rejection) to the spool's pending batch with a token
  `(generation, mid, qos, ...)`. Nothing is acknowledged here.
- the committer (`_run_committer`) group-commits the spool every
  `flush_interval_ms` (sooner when `flush_max_kib` are waiting), then
  publishes each rejection to its reject topic and acknowledges the messages
  whose records are now on disk. It also watches the disk budget.

A message id is only valid on the connection it arrived on: every connect and
disconnect bumps `generation`, and a token of an older generation is never
acknowledged (the broker redelivers that message on the new connection, and
the duplicate is harmless). When the disk budget is exceeded the consumer
disconnects, so the broker keeps the messages, and reconnects once there is room.
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.brokerwatch import STATE_FILE, WATCH_TOPICS, BrokerWatch
from ingest.clockcheck import ClockCheck
from ingest.fastpaho import FastClient, IngestClient, Publish, make_client
from ingest.history import History
from ingest.metrics import ACCEPTED, Metrics
from ingest.rejectbudget import RejectBudget
from ingest.retention import expire_rejects
from ingest.settings import IngestSettings
from ingest.spool import SpoolError, StreamWriter, usage_bytes
from sensors.contract import (
    Accepted,
    Contract,
    RejectCode,
    Rejected,
    reject_notice,
    reject_topic,
    rejection_record,
)
from sensors.errors import SmartcityError
from sensors.reading import Reading, encode_rejection
from sensors.registry import Sensor
from storage.schema import UNKNOWN_VENDOR

logger = logging.getLogger(__name__)

SYS_VERSION_TOPIC = "$SYS/broker/version"
# Unsubscribed from at shutdown (never subscribed): the broker's answer says it has every earlier packet.
BARRIER_TOPIC = "smartcity/v1/_ingest-stop"
# Mosquitto restores shared subscriptions of persistent sessions from this version on.
SHARED_SUBSCRIPTIONS_RESTORED = (2, 0, 12)
# Reject notices in flight to the broker at once; more wait in paho's queue.
REJECT_INFLIGHT = 1000
REJECT_TRACKED = 10 * REJECT_INFLIGHT
BUDGET_CHECK_INTERVAL_S = 1.0
USAGE_SCAN_INTERVAL_S = 30.0
BUDGET_WARNING_INTERVAL_S = 300.0
# How often reject segments past `reject_retention_h` are looked for (besides at start-up).
REJECT_EXPIRY_INTERVAL_S = 300.0
# Reason codes of a CONNACK that retrying will not fix.
FATAL_CONNACK = {"Bad user name or password", "Not authorized", "Client identifier not valid", "Banned"}
WARN_FRACTION = 0.9
# After a failed spool write, wait this long before consuming again.
SPOOL_ERROR_PAUSE_S = 10.0

_encode_json = msgspec.json.Encoder().encode


def _published(info: mqtt.MQTTMessageInfo) -> bool:
    """True once the broker acknowledged a reject notice. paho raises for one published while the
    connection was down (rc NO_CONN), though it still sends it after the reconnect: not yet, then."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


class ConsumerError(SmartcityError):
    """The broker refused this consumer (credentials, ACL, client id): retrying will not help."""


class Pending(msgspec.Struct, frozen=True, gc=False):
    """A received message waiting for its records to be durable. One is made per message: a Struct costs a
    third of a NamedTuple, and it holds no containers that could form a cycle (hence `gc=False`)."""

    generation: int
    mid: int
    qos: int
    received_ns: int
    notice: tuple[str, bytes] | None  # (reject topic, body) to publish once the message is durable


def mosquitto_version(text: str) -> tuple[int, ...] | None:
    """(2, 0, 11) from 'mosquitto version 2.0.11'; None for another broker."""
    match = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(part) for part in match.groups()) if match else None


class Consumer:
    """Consumes the configured topics into a spool stream. `start()`, then `stop()` (drains and acks)."""

    def __init__(
        self,
        settings: IngestSettings,
        contract: Contract,
        spool: StreamWriter[Pending],
        metrics: Metrics,
        history: History | None = None,
        reject_budget: RejectBudget | None = None,
    ):
        self.settings = settings
        self.contract = contract
        self.spool = spool
        self.metrics = metrics
        # (sensor_id, ts) -> values of the acceptance window, to refuse a rewrite (`conflict`)
        self.history = (
            history
            if history is not None
            else History(contract.max_age_ms, max_bytes=int(settings.history_max_mib * 2**20))
        )
        self.reject_budget = reject_budget or RejectBudget(
            settings.reject_store_per_s,
            int(settings.reject_store_max_mib * 2**20),
            int(settings.reject_retention_h * 3_600_000),
        )
        # Called after each group commit that made records durable: wakes the raw writer (thread or child).
        self.on_commit: Callable[[], None] | None = None
        self.fatal: SmartcityError | None = None
        self.failed = threading.Event()  # set with `fatal`
        self.session_present: bool | None = None
        self.broker_version: str | None = None
        self._generation = 0
        self._version_mid: int | None = None
        self._watch_mid: int | None = None
        self.broker_watch = BrokerWatch(spool.stream_dir / STATE_FILE, metrics, settings.client_id)
        self._connected_once = False
        self._connection_open = False  # from a connection attempt until the disconnect that ends it
        self.clock_check = ClockCheck(self.metrics.messages_by_vendor)
        self._ack_lock = threading.Lock()  # acks vs. generation changes
        self._wake = threading.Event()
        self._stopping = False
        self._committer_done = threading.Event()
        self._barrier_mid: int | None = None
        self._barrier_done = threading.Event()  # the broker answered the UNSUBSCRIBE sent at stop
        self._paused = False
        self._resume_after = 0.0
        self._next_usage_scan = 0.0
        self._usage_base = 0
        self._next_budget_warning = 0.0
        self._consume_lock = threading.Lock()  # stop() waits for a message being handled
        self._flush_bytes = settings.flush_max_kib * 1024
        # Reject notices not yet acknowledged by the broker (waited for at shutdown), oldest first.
        self._reject_infos: collections.deque[mqtt.MQTTMessageInfo] = collections.deque(maxlen=REJECT_TRACKED)
        self._client = self._make_client()
        self._committer = threading.Thread(target=self._run_committer, name="ingest-committer", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------

    def _make_client(self) -> IngestClient:
        s = self.settings
        client = make_client(s.fast_client, s.client_id)
        if s.mqtt.username is not None:
            client.username_pw_set(s.mqtt.username, s.mqtt.password)
        s.mqtt.address.apply_tls(client)
        client.reconnect_delay_set(s.reconnect_min_delay_s, s.reconnect_max_delay_s)
        client.max_inflight_messages_set(REJECT_INFLIGHT)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        if isinstance(client, FastClient):
            client.on_publishes = self._on_publishes
        return client

    def _connect(self) -> None:
        s = self.settings
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = s.session_expiry_s
        properties.ReceiveMaximum = s.receive_maximum
        self._client.connect_async(
            s.mqtt.host, s.mqtt.port, keepalive=s.keepalive_s, clean_start=False, properties=properties
        )
        self._client.loop_start()

    def start(self) -> None:
        logger.info(
            "connecting to %s as %s (session expiry %d s, receive maximum %d)",
            self.settings.mqtt.display,
            self.settings.client_id,
            self.settings.session_expiry_s,
            self.settings.receive_maximum,
        )
        self._connect()
        self._committer.start()

    def stop(self, timeout_s: float) -> None:
        """Stop taking messages, commit and acknowledge what was received, disconnect, close the spool.

        Messages that arrive after this call are not acknowledged: the broker
        keeps them for the next run.
        """
        deadline = time.monotonic() + timeout_s
        with self._consume_lock:  # a message being handled is appended before the last commit
            self._stopping = True
        self._wake.set()
        self._committer_done.wait(max(0.0, deadline - time.monotonic()))
        # Wait until the broker has the acknowledgements, not just until paho sent them: closing a
        # socket that still receives messages resets the connection, and the reset can discard what
        # the broker had received but not yet read (the last commit's PUBACKs: redelivered next run).
        # The broker handles a connection's packets in order, so its answer to this UNSUBSCRIBE (of a
        # filter never subscribed) comes after it handled every acknowledgement sent before.
        self._barrier_done.clear()
        rc, self._barrier_mid = self._client.unsubscribe(BARRIER_TOPIC)
        if rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._barrier_done.wait(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(not _published(info) for info in self._reject_infos):
            time.sleep(0.005)
        properties = Properties(PacketTypes.DISCONNECT)
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        self._client.disconnect(properties=properties)
        self._client.loop_stop()
        self.spool.close()
        logger.info("consumer stopped; spool segments closed")

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            if str(reason) in FATAL_CONNACK:
                self._fail(
                    ConsumerError(
                        f"broker {self.settings.mqtt.display} refused client {self.settings.client_id}: {reason} "
                        "(check SMARTCITY_MQTT_URL's user and password, and the broker's ACL)"
                    )
                )
            else:
                logger.warning("broker refused the connection: %s; retrying", reason)
            return
        with self._ack_lock:
            self._generation += 1
        self.metrics.connects += 1
        self.session_present = bool(flags.session_present)
        self.broker_watch.connected(self.session_present)
        expected_fresh = not self._connected_once and not self.spool.had_data
        if not flags.session_present and not expected_fresh:
            self.metrics.session_not_present += 1
            logger.warning(
                "the broker had no session for %s: messages published while ingest was away may be lost "
                "(session expired, or the broker runs without persistence)",
                self.settings.client_id,
            )
        logger.info(
            "connected to %s (session present: %s); subscribing to %s",
            self.settings.mqtt.display,
            bool(flags.session_present),
            ", ".join(self.settings.subscriptions),
        )
        self._connected_once = True
        # Re-subscribe on every connect: it is harmless with a session, and a lost session needs it.
        # retainHandling=1: retained messages only for a new subscription, not on each reconnect.
        options = SubscribeOptions(qos=1, retainHandling=1)
        client.subscribe([(topic, options) for topic in self.settings.subscriptions])
        if self.settings.share_group and self.broker_version is None:
            self._version_mid = client.subscribe(SYS_VERSION_TOPIC, qos=0)[1]
        # The broker's dropped-message counter and uptime (`#` does not match `$SYS`).
        self._watch_mid = client.subscribe([(topic, 0) for topic in WATCH_TOPICS])[1]

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._connection_open = True

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        logger.warning("cannot connect to %s; retrying", self.settings.mqtt.display)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        with self._ack_lock:
            self._generation += 1
        self._barrier_done.set()  # no answer will come on this connection
        # paho 2.2 reports a keepalive timeout twice (its check, then the loop's error): log the first.
        was_open, self._connection_open = self._connection_open, False
        if not was_open:
            return
        if str(reason) == "Session taken over":
            logger.error(
                "another client connected with client id %s and took over the session; give every ingest "
                "process its own client_id",
                self.settings.client_id,
            )
        elif not self._stopping and not self._paused:
            logger.warning("disconnected from %s (%s); reconnecting", self.settings.mqtt.display, reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if mid == self._watch_mid:
            if refused:
                logger.warning(
                    "cannot read %s (%s): messages the broker drops, and its restarts, are not watched; "
                    "allow user %s to read $SYS/#",
                    ", ".join(WATCH_TOPICS),
                    refused[0],
                    self.settings.mqtt.username,
                )
        elif refused and mid == self._version_mid:
            logger.warning("cannot read %s (%s): the broker version is not checked", SYS_VERSION_TOPIC, refused[0])
        elif not refused and mid != self._version_mid:
            logger.info("subscribed to %s", ", ".join(self.settings.subscriptions))
        elif refused:
            self._fail(
                ConsumerError(
                    f"broker refused the subscription to {', '.join(self.settings.subscriptions)}: "
                    f"{', '.join(refused)} (check the ACL of user {self.settings.mqtt.username})"
                )
            )

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid == self._barrier_mid:
            self._barrier_done.set()

    def _on_version(self, payload: bytes) -> None:
        self.broker_version = payload.decode(errors="replace")
        self._client.unsubscribe(SYS_VERSION_TOPIC)
        version = mosquitto_version(self.broker_version)
        if self.settings.share_group and version is not None and version < SHARED_SUBSCRIPTIONS_RESTORED:
            logger.warning(
                "broker is %s, which does not restore shared subscriptions after a restart: messages "
                "published before ingest re-subscribes are lost. Use topic partitions (--topics, one "
                "client id each) or Mosquitto >= 2.0.12",
                self.broker_version,
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # paho's own client (fast_client = false); FastClient calls `_on_publishes`
        payload = bytes(message.payload)  # paho hands bytes (its type says bytes | bytearray)
        self._on_publishes([(message.mid, message._topic, payload, message.qos, message.dup, message.retain)])

    def _on_publishes(self, publishes: list[Publish]) -> None:
        """The messages of one read from the socket, in order (they share one receive time)."""
        received_ns = time.time_ns()
        with self._consume_lock:
            if self._stopping:
                return  # not acknowledged: the broker keeps them for the next run
            consume = self._consume
            for mid, topic, payload, qos, dup, retain in publishes:
                try:
                    if topic[:1] == b"$":
                        self._on_sys(topic, payload, retain)
                    else:
                        consume(mid, topic, payload, qos, dup, received_ns)
                except Exception as err:  # a bug: without this paho's thread would die and ingest stall silently
                    logger.exception("handling a message on %r failed", topic[:200])
                    self._fail(SmartcityError(f"handling an MQTT message failed: {err}"))
            if self.spool.pending_bytes >= self._flush_bytes:
                self._wake.set()

    def _on_sys(self, topic: bytes, payload: bytes, retain: bool) -> None:
        if topic == SYS_VERSION_TOPIC.encode():
            self._on_version(payload)
        else:
            self.broker_watch.on_message(topic.decode(errors="replace"), payload, retain)

    def _consume(self, mid: int, topic_bytes: bytes, payload: bytes, qos: int, dup: bool, received_ns: int) -> None:
        received_ms = received_ns // 1_000_000
        metrics = self.metrics
        metrics.received += 1
        if dup:
            metrics.duplicates += 1
        topic = topic_bytes.decode("utf-8", errors="replace")
        try:
            result = self.contract.decode(topic, payload, received_ms)
        except Exception as err:
            # The contract promises never to raise; if it does, this message must still not
            # block the others (a poison message redelivered forever): reject it and go on.
            logger.exception("the contract raised on a message on %r (a bug in sensors.contract)", topic[:200])
            result = Rejected(RejectCode.INVALID_JSON, f"payload could not be decoded: {err}"[:300])
        if type(result) is Accepted:
            readings = result.readings
            clash = self.history.admit(readings, received_ms)
            if clash is None:  # the path of almost every message, so `Metrics.count_outcome` inline
                key = (result.sensor.vendor, ACCEPTED)
                by_vendor = metrics.by_vendor
                by_vendor[key] = by_vendor.get(key, 0) + 1
                metrics.accepted += 1
                metrics.readings += len(readings)
                self.spool.append_readings(readings, Pending(self._generation, mid, qos, received_ns, None))
                return
            result = _conflict(clash, result.sensor)
        assert isinstance(result, Rejected)
        self._reject(topic, payload, result, mid, qos, received_ns)

    def _reject(self, topic: str, payload: bytes, result: Rejected, mid: int, qos: int, received_ns: int) -> None:
        """Count a rejection, store its record (within its vendor's budget) and answer it after the commit."""
        received_ms = received_ns // 1_000_000
        metrics = self.metrics
        metrics.count_outcome(result)
        metrics.rejected[result.code.value] += 1
        if result.offset_ms is not None and result.sensor is not None:
            warning = self.clock_check.observe(result.sensor.vendor, result.offset_ms, received_ms)
            if warning is not None:
                logger.error(warning)
        notice = (reject_topic(topic), _encode_json(reject_notice(topic, payload, result, received_ms)))
        pending = Pending(self._generation, mid, qos, received_ns, notice)
        record = rejection_record(topic, payload, result, received_ms)
        line = encode_rejection(record)
        if self.reject_budget.admit(record.vendor, len(line), received_ms):
            self.spool.append_rejection(line, pending)
        else:  # answered and acknowledged, not kept: counted, so the audit can account for it
            vendor = record.vendor or UNKNOWN_VENDOR
            metrics.rejects_not_stored[vendor] = metrics.rejects_not_stored.get(vendor, 0) + 1
            self.spool.append_token(pending)
        logger.debug("rejected a message on %s: %s: %s", topic[:200], result.code.value, result.detail)

    # -- committer thread ----------------------------------------------------------------------

    def _run_committer(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        next_budget_check = 0.0
        next_reject_expiry = time.monotonic() + REJECT_EXPIRY_INTERVAL_S  # the service expired them at start
        try:
            while True:
                self._wake.wait(interval)
                self._wake.clear()
                stopping = self._stopping
                self._commit()
                now = time.monotonic()
                if now >= next_budget_check and not stopping:
                    next_budget_check = now + BUDGET_CHECK_INTERVAL_S
                    self._check_budget()
                if now >= next_reject_expiry and not stopping:
                    next_reject_expiry = now + REJECT_EXPIRY_INTERVAL_S
                    self._expire_rejects()
                if stopping:
                    return
        except Exception as err:  # a bug here would silently stop all acknowledgements
            logger.exception("the spool committer failed")
            self._fail(SmartcityError(f"the spool committer failed: {err}"))
        finally:
            self._committer_done.set()

    def _commit(self) -> None:
        started = time.monotonic()
        try:
            done = self.spool.commit()
        except SpoolError as err:
            # These messages are not on disk: drop the connection so the broker redelivers them later.
            logger.error("%s; pausing consumption for %.0f s", err, SPOOL_ERROR_PAUSE_S)
            self._resume_after = time.monotonic() + SPOOL_ERROR_PAUSE_S
            self._pause()
            return
        if not done:
            return
        if self.on_commit is not None:
            self.on_commit()
        now_ns = time.time_ns()
        self.metrics.observe_commit(
            len(done), (time.monotonic() - started) * 1000, (now_ns - done[0].received_ns) / 1e6
        )
        client = self._client
        for pending in done:
            if pending.notice is not None:
                self._publish_rejection(*pending.notice)
        with self._ack_lock:
            generation = self._generation
            if done[0].generation == generation:  # all of this connection (tokens are in arrival order)
                mids = [p.mid for p in done if p.qos == 1]
                stale = 0
            else:
                mids = [p.mid for p in done if p.generation == generation and p.qos == 1]
                stale = sum(1 for p in done if p.generation != generation)
            client.ack_many(mids)
        if stale:
            self.metrics.stale_acks += stale
            logger.debug("%d messages of a previous connection not acknowledged (the broker redelivers them)", stale)

    def _publish_rejection(self, topic: str, body: bytes) -> None:
        info = self._client.publish(topic, body, qos=1)
        infos = self._reject_infos
        while infos and _published(infos[0]):
            infos.popleft()
        infos.append(info)

    def _expire_rejects(self) -> None:
        try:
            expire_rejects(self.spool.stream_dir, self.settings.reject_retention_h * 3600)
        except OSError as err:  # a failed deletion is retried at the next round; it must not stop the commits
            logger.warning("could not delete expired reject segments: %s", err)

    # -- disk budget ---------------------------------------------------------------------------

    def _check_budget(self) -> None:
        s = self.settings
        now = time.monotonic()
        if now >= self._next_usage_scan:
            # A full scan of the spool (every stream, deletions by the writer) now and then;
            # in between, what this process wrote since.
            self._next_usage_scan = now + USAGE_SCAN_INTERVAL_S
            self._usage_base = usage_bytes(s.spool_root) - self.spool.bytes_written
        used = self._usage_base + self.spool.bytes_written
        self.metrics.spool_bytes = used
        free = shutil.disk_usage(s.spool_root).free
        max_bytes = s.spool_max_mib * 2**20
        min_free = s.min_free_disk_mib * 2**20
        full = bool(max_bytes and used >= max_bytes) or free <= min_free
        warn = bool(max_bytes and used >= WARN_FRACTION * max_bytes) or free <= 2 * min_free
        limit = f"{s.spool_max_mib:g} MiB" if max_bytes else "no limit"
        if full and not self._paused:
            logger.warning(
                "spool budget reached (%.0f MiB used, %s; %.0f MiB free disk, minimum %.0f MiB): stopped reading "
                "and acknowledging; the broker keeps the messages until there is room",
                used / 2**20,
                limit,
                free / 2**20,
                s.min_free_disk_mib,
            )
            self._pause()
        elif self._paused and not full and self.fatal is None and now >= self._resume_after:
            logger.warning("spool has room again (%.0f MiB used, %.0f MiB free): resuming", used / 2**20, free / 2**20)
            self._resume()
        if warn and not full and now >= self._next_budget_warning:
            self._next_budget_warning = now + BUDGET_WARNING_INTERVAL_S
            logger.warning(
                "spool is filling: %.0f MiB used (%s), %.0f MiB free disk (minimum %.0f MiB); ingest will stop "
                "acknowledging when it is full",
                used / 2**20,
                limit,
                free / 2**20,
                s.min_free_disk_mib,
            )
        elif not warn:
            self._next_budget_warning = 0.0

    def _pause(self) -> None:
        if self._paused:
            return
        self._paused = True
        self.metrics.paused = 1
        self._client.disconnect()
        self._client.loop_stop()

    def _resume(self) -> None:
        self._paused = False
        self.metrics.paused = 0
        self._connect()

    def _fail(self, error: SmartcityError) -> None:
        if self.fatal is None:
            self.fatal = error
            logger.error("%s", error)
        self.failed.set()


def _conflict(clash: Reading, sensor: Sensor | None) -> Rejected:
    """`conflict`: a reading's (sensor_id, ts) is stored with other values; the first value is kept."""
    return Rejected(
        RejectCode.CONFLICT,
        f"a reading of {clash.sensor_id} at {_iso(clash.ts)} is already stored with other values; the first "
        "is kept (send a new ts for a new value; the same values again are accepted as a duplicate)",
        sensor,
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
