"""Rejections cost bounded disk, and stored history is not rewritten, against real Mosquitto and InfluxDB.

- one vendor flooding bad messages: each is answered on its reject topic, the reject store stays within the
  vendor's byte cap, and what is not kept is counted (`rejects_not_stored`, in InfluxDB), logged and alerted;
- reject segments past `reject_retention_h` are deleted when ingest starts;
- a reading older than the acceptance window (72 h) is refused as `ts_too_old`, saying so;
- a reading for a stored (sensor, ts) with other values is refused as `conflict` and InfluxDB keeps the
  first value, also after a restart of ingest (the index is rebuilt from the spool); the same values
  again are an accepted duplicate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ingest.spool import StreamWriter
from sensors.reading import Rejection
from sensors.spool import CLOSED_SUFFIX, REJECTS, closed_segments, meta_path, read_meta, read_rejections, write_meta
from storage import schema
from tests.ingest.helpers import IngestProcess, Publisher, influx_query, ingest_env, wait_until
from tests.ingest.test_visibility_it import assert_alert_fires
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

SENSOR = "pkt-aq-001"
VENDOR = "siam-airsense"
TOPIC = f"smartcity/v1/phuket/air_quality/{SENSOR}"
REJECT_TOPIC = f"smartcity/dlq/v1/phuket/air_quality/{SENSOR}"
DAY_MS = 86_400_000


class Notices:
    """Counts what arrives on one reject topic, keeping the last few notices."""

    def __init__(self, stack: StackHandle, topic: str) -> None:
        self.count = 0
        self.codes: list[str] = []
        self.last: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = stack.mqtt_client()
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        notice = json.loads(message.payload)
        with self._lock:
            self.count += 1
            self.codes.append(notice["code"])
            self.last = [*self.last[-9:], notice]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def vendor_sum(stack: StackHandle, field: str, instance: str, vendor: str) -> int:
    result = influx_query(
        stack,
        f'SELECT sum("{field}") FROM "raw"."ingest_vendors" WHERE instance = \'{instance}\' AND vendor = \'{vendor}\'',
    )
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def point_values(stack: StackHandle, ts: int) -> list[float]:
    result = influx_query(
        stack, f'SELECT pm25 FROM "raw"."air_quality" WHERE sensor_id = \'{SENSOR}\' AND time = {ts}ms'
    )
    series = result["results"][0].get("series") or []
    return [float(row[1]) for s in series for row in s["values"]]


def test_a_reject_flood_is_answered_but_its_storage_is_capped_and_counted(stack: StackHandle, tmp_path: Path) -> None:
    flood = 20_000
    now = int(time.time() * 1000)
    # out_of_range, with 1.5 KiB of padding a vendor's firmware might add: 20k of them are 30 MiB of payload
    bad = [
        (TOPIC, json.dumps({"ts": now - i, "values": {"pm25": -3}, "pad": "x" * 1500}).encode()) for i in range(flood)
    ]
    notices = Notices(stack, REJECT_TOPIC)
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="it-flood", reject_store_per_s=0, reject_store_max_mib=1)
    stream = home / "spool" / "it-flood"
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish(bad)
        publisher.close()
        wait_until(lambda: notices.count >= flood, 120, "a notice for every rejected message")
        assert ingest.terminate() == 0
    notices.close()
    assert notices.count == flood and set(notices.codes) == {"out_of_range"}

    segments = [s for s in closed_segments(home / "spool", REJECTS) if s.stream == "it-flood"]
    stored = sum(s.count for s in segments)
    kept_bytes = sum(s.bytes for s in segments)
    assert kept_bytes <= 2**20, f"{kept_bytes} bytes of rejections kept; the cap is 1 MiB"
    assert 0 < stored < flood
    per_reject = kept_bytes / stored
    assert per_reject < 1300, f"{per_reject:.0f} bytes per kept rejection"
    record = next(read_rejections(segments[0].path))
    assert record.payload_bytes == len(bad[0][1]) and record.payload_sha256 and len(record.payload_b64) <= 684
    not_stored = flood - stored
    assert vendor_sum(stack, "rejects_not_stored", "it-flood", VENDOR) == not_stored
    result = influx_query(stack, 'SELECT sum("rejects_not_stored") FROM "raw"."ingest" WHERE instance = \'it-flood\'')
    assert result["results"][0]["series"][0]["values"][0][1] == not_stored
    assert_alert_fires(stack, schema.INGEST_REJECTS_NOT_STORED, "it-flood", not_stored)  # the provisioned rule
    log = (tmp_path / "ingest.log").read_text()
    warnings = log.count(f"vendor {VENDOR} is over its reject store budget")
    assert 1 <= warnings <= 3, f"{warnings} warnings: they are rate-limited to one a minute"
    print(f"flood: {flood} rejected, {stored} kept ({per_reject:.0f} bytes each, {kept_bytes} bytes), {not_stored} "
          "answered only")  # fmt: skip
    assert stream.is_dir()


def _old_reject_segments(stream: Path, count: int, age_ms: int) -> list[Path]:
    """`count` closed reject segments in a stream, dated `age_ms` ago (as if closed then)."""
    writer: StreamWriter[int] = StreamWriter(stream, segment_max_bytes=1, segment_max_age_s=3600)
    for n in range(count):
        rejection = Rejection(code="invalid_json", detail="x", topic=TOPIC, received_at="2026-01-01T00:00:00.000Z",
                              payload_b64="e30=", sensor_id=SENSOR, vendor=VENDOR)  # fmt: skip
        writer.append_rejection(rejection, n)
        writer.commit()
    writer.close()
    paths = sorted(stream.glob(f"{REJECTS}-*{CLOSED_SUFFIX}"))
    for path in paths:
        info = read_meta(path)
        write_meta(dataclasses.replace(info, closed_at=info.closed_at - age_ms), path)
    return paths


def test_reject_segments_past_the_retention_are_deleted_at_start(stack: StackHandle, tmp_path: Path) -> None:
    home = tmp_path / "home"
    stream = home / "spool" / "it-reject-retention"
    old = _old_reject_segments(stream, 3, 8 * DAY_MS)  # past the default 168 h
    young = _old_reject_segments(stream, 2, 6 * DAY_MS)  # within it
    young = [p for p in young if p not in old]
    env = ingest_env(stack, home, client_id="it-reject-retention")
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        assert ingest.terminate() == 0
    assert not any(p.exists() or meta_path(p).exists() for p in old), "8-day-old reject segments are deleted"
    assert all(p.exists() for p in young), "6-day-old reject segments are kept"
    assert "deleted 3 reject segments past the 168 h reject retention" in (tmp_path / "ingest.log").read_text()


def test_old_readings_and_rewrites_are_refused_and_the_first_value_survives_a_restart(
    stack: StackHandle, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    ts = now - now % 60_000 - 2 * DAY_MS  # two days back: within the 72 h window

    def reading(value: float, at: int = ts) -> tuple[str, bytes]:
        return TOPIC, json.dumps({"ts": at, "values": {"pm25": value}}).encode()

    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="it-history")
    notices = Notices(stack, REJECT_TOPIC)
    with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish([reading(5.0), reading(5.0), reading(999.0), reading(1.0, now - 28 * DAY_MS)])
        wait_until(lambda: notices.count >= 2, 20, "two rejections")
        wait_until(lambda: point_values(stack, ts) == [5.0], 20, "the first value in InfluxDB")
        assert ingest.terminate() == 0
    assert notices.codes == ["conflict", "ts_too_old"], "the identical copy is a duplicate, accepted"
    conflict, too_old = notices.last
    assert "already stored with other values" in conflict["detail"]
    assert "72 h acceptance window" in too_old["detail"]
    accepted = influx_query(stack, 'SELECT sum("accepted") FROM "raw"."ingest" WHERE instance = \'it-history\'')
    assert accepted["results"][0]["series"][0]["values"][0][1] == 2

    # A new process rebuilds the index from the spool: the rewrite is still refused, the duplicate accepted.
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        ingest.wait_log("subscribed to")
        assert "conflict index: 1 readings" in (tmp_path / "ingest-2.log").read_text()
        publisher.publish([reading(7.0), reading(5.0)])
        publisher.close()
        wait_until(lambda: notices.count >= 3, 20, "the rejection after the restart")
        time.sleep(1.5)  # the raw writer's poll and a metrics report
        assert ingest.terminate() == 0
    notices.close()
    assert notices.codes[2:] == ["conflict"]
    assert point_values(stack, ts) == [5.0], "InfluxDB keeps the first value"
    accepted = influx_query(stack, 'SELECT sum("accepted") FROM "raw"."ingest" WHERE instance = \'it-history\'')
    assert accepted["results"][0]["series"][0]["values"][0][1] == 3
    assert os.path.isdir(home / "spool" / "it-history")
