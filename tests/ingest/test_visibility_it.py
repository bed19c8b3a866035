"""Loss that ingest makes visible without the simulator's manifests, against real Mosquitto and InfluxDB:
messages the broker drops, a broker session lost or restored from an older copy, a damaged spool segment.
Each shows in the log, in the `ingest` measurement, and fires its provisioned alert rule's query."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dashboards.alerts import AlertRule
from dashboards.provisioning import generate
from deploy.servers import Mosquitto, free_port
from ingest.brokerwatch import STATE_FILE, SYS_DROPPED_TOPIC
from sensors.reading import decode_reading, verify_line
from sensors.registry import default_registry
from sensors.spool import READINGS, closed_segments
from storage import schema
from storage.query import QueryClient, parse_results
from storage.settings import InfluxSettings
from tests.ingest.helpers import (
    IngestProcess,
    Publisher,
    influx_query,
    ingest_env,
    messages,
    publish_all,
    wait_for_points,
    wait_until,
)
from tests.servers import StackHandle


@dataclass(kw_only=True)
class SysBroker(Mosquitto):
    """The stack's Mosquitto configuration, with `$SYS` every second and a small session queue."""

    max_queued: int = 1000

    def write_config(self) -> None:
        super().write_config()
        with open(self.config_path, "a") as config:  # the last value of an option wins
            config.write(f"sys_interval 1\nmax_queued_messages {self.max_queued}\n")


def own_broker(stack: StackHandle, folder: Path, max_queued: int = 1000) -> tuple[SysBroker, StackHandle]:
    """A private broker with the stack's accounts, and a handle that points MQTT clients at it."""
    broker = SysBroker(
        data_dir=folder,
        port=free_port(),
        password_file=stack.home / "mosquitto" / "passwd",
        acl_file=stack.home / "mosquitto" / "acl",
        max_queued=max_queued,
    )
    broker.start()
    return broker, StackHandle(stack.stack, stack.ports.__class__(mqtt=broker.port, influx=stack.influx_port))


def broker_env(stack: StackHandle, broker: Mosquitto, home: Path, client_id: str, **settings: object) -> dict[str, str]:
    env = ingest_env(stack, home, client_id=client_id, **settings)
    env["SMARTCITY_MQTT_URL"] = f"mqtt://ingest:{stack.mqtt_password('ingest')}@127.0.0.1:{broker.port}"
    return env


def metric_sum(stack: StackHandle, field: str, instance: str) -> int:
    result = influx_query(stack, f'SELECT sum("{field}") FROM "raw"."ingest" WHERE instance = \'{instance}\'')
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def loss_rule(field: str) -> AlertRule:
    return next(r for g in generate(default_registry()).rule_groups for r in g.rules if r.uid == f"ops-loss-{field}")


def assert_alert_fires(stack: StackHandle, field: str, instance: str, value: int) -> None:
    """The provisioned rule's query A, reduced with `last` (B), passes its threshold (C) for this instance."""
    rule = loss_rule(field.replace("_", "-"))
    with QueryClient(InfluxSettings.from_env(stack.env())) as client:
        series = parse_results(client.raw(rule.query.query))
    mine = [s for s in series if s.tags.get("instance") == instance]
    assert len(mine) == 1, series
    last = mine[0].values[-1][1]
    assert last == value and rule.evaluator == "gt" and last > rule.threshold


def sys_dropped(handle: StackHandle, at_least: int) -> int:
    """The broker's own dropped counter, read by a client of its own, once it reached `at_least`
    (the retained value may be up to a `sys_interval` old)."""
    client = handle.mqtt_client(user="ingest")  # admin's "#" does not match $SYS
    got: list[int] = []
    client.on_message = lambda _c, _u, message: got.append(int(message.payload))
    client.subscribe(SYS_DROPPED_TOPIC)
    try:
        wait_until(lambda: bool(got) and got[-1] >= at_least, 10, SYS_DROPPED_TOPIC)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[-1]


def test_messages_dropped_by_a_full_broker_queue_are_counted_and_alerted(stack: StackHandle, tmp_path: Path) -> None:
    broker, handle = own_broker(stack, tmp_path / "mosquitto", max_queued=50)
    try:
        env = broker_env(stack, broker, tmp_path / "home", "vis-dropped")
        with IngestProcess(env, tmp_path / "ingest-1.log") as ingest:  # the broker learns the session
            ingest.wait_log("subscribed to")
            assert ingest.terminate() == 0
        items = messages(300, slot=50)
        publisher = Publisher(handle)
        publisher.publish(items)  # ingest is away: 50 are queued, the rest dropped
        publisher.close()
        dropped = sys_dropped(handle, at_least=250)
        with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
            ingest.wait_log(f"the broker dropped {dropped} messages")
            wait_until(lambda: metric_sum(stack, "broker_dropped", "vis-dropped") == dropped, 15, "broker_dropped")
            assert ingest.terminate() == 0
        assert_alert_fires(stack, schema.INGEST_BROKER_DROPPED, "vis-dropped", dropped)
        # A restart of ingest does not count the same drops again.
        with IngestProcess(env, tmp_path / "ingest-3.log") as ingest:
            ingest.wait_log("subscribed to")
            time.sleep(2.5)  # two $SYS intervals
            assert ingest.terminate() == 0
        assert "the broker dropped" not in ingest.log.read_text()
        assert metric_sum(stack, "broker_dropped", "vis-dropped") == dropped
    finally:
        broker.stop()


def test_a_broker_restart_that_loses_or_restores_the_session_is_reported(stack: StackHandle, tmp_path: Path) -> None:
    broker, handle = own_broker(stack, tmp_path / "mosquitto")
    try:
        env = broker_env(stack, broker, tmp_path / "home", "vis-session")
        state = tmp_path / "home" / "spool" / "vis-session" / STATE_FILE
        with IngestProcess(env, tmp_path / "ingest.log") as ingest:
            ingest.wait_log("subscribed to")
            wait_until(state.exists, 10, "the broker's start from a live $SYS uptime")
            time.sleep(4)  # the broker lived long enough for a restart to be told apart (RESTART_SLACK_S)
            # A restart from its persistence file (here a clean one): the session is back, but after a crash
            # it would be the copy of the last autosave.
            broker.stop()
            broker.start()
            ingest.wait_log("restored the session of vis-session from its persistence file")
            wait_until(lambda: metric_sum(stack, "session_restored", "vis-session") == 1, 15, "session_restored")
            assert_alert_fires(stack, schema.INGEST_SESSION_RESTORED, "vis-session", 1)
            # A crash with the persistence file gone: no session at all.
            time.sleep(4)
            broker.kill()
            shutil.rmtree(broker.persistence_dir)
            broker.start()
            ingest.wait_log("the broker had no session for vis-session")
            wait_until(lambda: metric_sum(stack, "session_not_present", "vis-session") == 1, 15, "session_not_present")
            assert_alert_fires(stack, schema.INGEST_SESSION_NOT_PRESENT, "vis-session", 1)
            # Ingest still works on the new session.
            items = messages(20, slot=51)
            publish_all(handle, items)
            wait_for_points(stack, items, timeout_s=20)
            assert ingest.terminate() == 0
        assert metric_sum(stack, "session_restored", "vis-session") == 1
    finally:
        broker.stop()


def test_a_cut_closed_segment_is_reported_with_the_exact_loss_and_its_intact_readings_stored(
    stack: StackHandle, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = ingest_env(stack, home, client_id="vis-cut")
    items = messages(1000, slot=52)
    with IngestProcess(env, tmp_path / "consume.log", "--role", "consume") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish(items)
        publisher.close()
        wait_until(lambda: metric_sum(stack, "accepted", "vis-cut") == len(items), 20, "every reading spooled")
        assert ingest.terminate() == 0  # closes the segment
    [segment] = closed_segments(home / "spool", READINGS)
    data = segment.path.read_bytes()
    cut = data[: len(data) * 6 // 10]
    segment.path.write_bytes(cut)  # a closed segment the raw writer has not written yet, cut to 60 %
    intact = [line for line in cut.splitlines(keepends=True) if verify_line(line)]
    lost = len(items) - len(intact)
    assert 0 < len(intact) < len(items)
    kept = {(r.sensor_id, r.ts) for r in map(decode_reading, intact)}
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log(f"damaged closed segment: {lost} of its {len(items)} records lost, {len(intact)} intact")
        wait_for_points(stack, [m for m in items if (m.sensor_id, m.ts) in kept], timeout_s=30)
        wait_until(lambda: metric_sum(stack, "spool_lost_records", "vis-cut") == lost, 15, "spool_lost_records")
        assert ingest.terminate() == 0
    assert_alert_fires(stack, schema.INGEST_SPOOL_LOST, "vis-cut", lost)
    # Reported once: a restart does not count the same segment again.
    note = json.loads(segment.path.with_name(segment.path.name + ".damage.json").read_text())
    assert note["lost"] == lost
    with IngestProcess(env, tmp_path / "ingest-2.log") as ingest:
        ingest.wait_log("subscribed to")
        time.sleep(1.5)
        assert ingest.terminate() == 0
    assert metric_sum(stack, "spool_lost_records", "vis-cut") == lost
