"""Writers against the real InfluxDB 1.6.7: confirmed writes, retries, bisection, outages."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest

from sensors.reading import Reading
from storage.errors import StorageWriteError
from storage.line_protocol import FieldValue, Point, Precision, encode
from storage.query import QueryClient, ident
from storage.schema import raw_point
from storage.settings import InfluxSettings
from storage.transports import Response, Transport, V1Transport
from storage.writer import DeadLetter, Writer, make_writer
from tests.servers import StackHandle
from tests.storage.conftest import fresh_db
from tests.storage.faulty_proxy import FaultyProxy

pytestmark = pytest.mark.integration

NOW_MS = time.time_ns() // 1_000_000


def count(settings: InfluxSettings, measurement: str, field: str = "v", rp: str | None = None) -> int:
    with QueryClient(settings) as client:
        series = client.query(
            "SELECT count({f}) FROM {m}", {"f": ident(field), "m": ident(rp or settings.raw_rp, measurement)}
        )
    return int(series[0].values[0][1]) if series else 0


def points(n: int, measurement: str = "m", start_ms: int = NOW_MS - 3_600_000) -> list[Point]:
    return [
        Point(measurement, {"sensor_id": f"s{i % 50}"}, {"v": float(i), "seq": i}, start_ms + i, "ms") for i in range(n)
    ]


def test_confirmed_write_of_readings_lands_with_ms_times_and_float_fields(influx: InfluxSettings) -> None:
    reading = Reading(
        sensor_id="pkt-aq-001",
        kind="air_quality",
        ts=NOW_MS - 60_000,
        values={"pm25": 12, "pm10": 30.5},
        vendor="acme",
        super_cluster="andaman",
        city="phuket",
        district="kathu",
        site="patong beach",
    )
    with make_writer(influx) as writer:
        result = writer.write([raw_point(reading)])
        again = writer.write([raw_point(reading)])  # a redelivered duplicate is harmless
    assert (result.points, result.dead_letters, again.points) == (1, (), 1)
    with QueryClient(influx) as client:
        [series] = client.query("SELECT * FROM {m} GROUP BY *", {"m": ident("raw", "air_quality")})
    assert series.tags == {
        "super_cluster": "andaman",
        "city": "phuket",
        "district": "kathu",
        "site": "patong beach",
        "sensor_id": "pkt-aq-001",
        "vendor": "acme",
    }
    [record] = series.records()
    assert record["pm25"] == 12.0 and record["pm10"] == 30.5
    assert record["time"].timestamp() * 1000 == reading.ts


@pytest.mark.parametrize("gzip", [True, False])
def test_large_write_is_batched_and_every_point_lands(influx: InfluxSettings, gzip: bool) -> None:
    settings = dataclasses.replace(influx, batch_size=1_000, gzip=gzip)
    with make_writer(settings) as writer:
        result = writer.write(points(5_500))
        stats = writer.stats.snapshot()
    assert result.points == 5_500
    assert (stats.batches, stats.points, stats.batch_points_last) == (6, 5_500, 500)
    assert stats.latency_s_max > 0
    assert count(influx, "m") == 5_500


def test_pre_encoded_lines_are_written_as_given(influx: InfluxSettings) -> None:
    data = encode(points(300, "pre"))
    with make_writer(influx) as writer:
        assert writer.write_lines(data, "ms").points == 300
        assert writer.write_lines([data[: data.index(b"\n") + 1]], "ms").points == 1
    assert count(influx, "pre") == 300


def test_encoded_lines_are_batched_and_refused_ones_dead_lettered(influx: InfluxSettings) -> None:
    """`write_encoded` (the raw writer's): lines of the encoder in batches; a refused one is bisected out."""
    lines = encode(points(2_500, "enc")).decode().splitlines()
    lines[7] = lines[7].replace("seq=7i", "seq=7.5")  # a type conflict: 400 partial write
    letters: list[DeadLetter] = []
    with make_writer(dataclasses.replace(influx, batch_size=1_000), on_dead_letter=letters.append) as writer:
        writer.write(points(1, "enc"))  # fixes the type of field seq: integer
        result = writer.write_encoded(lines, "ms")
        last_batch = writer.stats.snapshot().batch_points_last
    assert result.points == 2_499
    assert [letter.line for letter in result.dead_letters] == [lines[7].encode()]
    assert last_batch == 500  # 2,500 lines in batches of 1,000
    assert count(influx, "enc", "seq") == 2_499


def test_refused_points_are_bisected_out_and_the_rest_is_written(influx: InfluxSettings) -> None:
    batch = points(1_000, "bis")
    with make_writer(influx) as writer:
        writer.write(batch[:1])  # fixes the type of field v: float
    bad: dict[int, dict[str, FieldValue]] = {
        17: {"v": "text"},
        500: {"v": True},
        999: {"v": 1},
    }  # type conflicts: 400 partial write
    for index, fields in bad.items():
        batch[index] = batch[index]._replace(fields=fields)
    batch[42] = batch[42]._replace(time=NOW_MS - 40 * 86_400_000)  # older than the 30 d raw retention
    letters: list[DeadLetter] = []
    with make_writer(dataclasses.replace(influx, batch_size=1_000), on_dead_letter=letters.append) as writer:
        result = writer.write(batch)
        stats = writer.stats.snapshot()
    assert result.points == 996
    assert sorted(letter.line for letter in result.dead_letters) == sorted(
        encode([batch[i]]).rstrip(b"\n") for i in (17, 42, 500, 999)
    )
    assert letters == list(result.dead_letters)
    assert {letter.status for letter in letters} == {400}
    assert any("field type conflict" in letter.reason for letter in letters)
    assert any("retention" in letter.reason for letter in letters)
    assert stats.dead_letters == 4 and stats.retries == 0
    assert count(influx, "bis", "seq") == 996


def test_unparsable_pre_encoded_line_is_dead_lettered(influx: InfluxSettings) -> None:
    good = encode(points(10, "parse"))
    cut = good.index(b"\n", good.index(b"\n") + 1) + 1  # after the second line
    data = good[:cut] + b"not line protocol\n" + good[cut:]
    letters: list[DeadLetter] = []
    with make_writer(influx, on_dead_letter=letters.append) as writer:
        result = writer.write_lines(data, "ms")
    assert [letter.line for letter in letters] == [b"not line protocol"]
    assert result.points == 10 and count(influx, "parse") == 10


def test_points_line_protocol_cannot_carry_are_dead_lettered_and_the_rest_written(influx: InfluxSettings) -> None:
    batch = points(2_500, "unrep")
    batch[5] = batch[5]._replace(tags={"sensor_id": "trailing\\"})
    batch[2_100] = batch[2_100]._replace(fields={"v": float("nan")})
    letters: list[DeadLetter] = []
    with make_writer(dataclasses.replace(influx, batch_size=1_000), on_dead_letter=letters.append) as writer:
        result = writer.write(batch)
    assert result.points == 2_498 and list(result.dead_letters) == letters
    assert [(letter.status, letter.point) for letter in letters] == [(0, batch[5]), (0, batch[2_100])]
    assert "backslash" in letters[0].reason and "not finite" in letters[1].reason
    assert count(influx, "unrep", "seq") == 2_498
    with make_writer(influx, on_dead_letter=letters.append) as again:
        again.write([Point("unrep2", {}, {"v": 1.0}, NOW_MS, "ms"), Point("#bad", {}, {"v": 1.0}, NOW_MS, "ms")])
    assert letters[-1].point == Point("#bad", {}, {"v": 1.0}, NOW_MS, "ms")
    assert count(influx, "unrep2") == 1


def test_a_failing_dead_letter_callback_does_not_lose_the_rest(influx: InfluxSettings) -> None:
    def boom(letter: DeadLetter) -> None:
        raise RuntimeError("callback bug")

    start_ms = NOW_MS - 3_600_000
    batch = [*points(20, "cb", start_ms)]
    # the conflicting point shares the shard of the others (InfluxDB 1.x checks field types per shard)
    batch.append(Point("cb", {}, {"v": "x"}, start_ms + 20, "ms"))
    with make_writer(influx, on_dead_letter=boom) as writer:
        writer.write(batch[:1])
        result = writer.write(batch)
    assert result.points == 20 and len(result.dead_letters) == 1


@pytest.mark.parametrize("batch_size", [100, 3])
@pytest.mark.parametrize(
    ("change", "message"), [({"password": "wrong"}, "HTTP 401"), ({"db": "no_such_db"}, "database not found")]
)
def test_auth_and_database_errors_raise_without_retry_or_dead_letters(
    influx: InfluxSettings, change: dict[str, str], message: str, batch_size: int
) -> None:
    letters: list[DeadLetter] = []
    settings = dataclasses.replace(influx, batch_size=batch_size, **change)  # type: ignore[arg-type]
    with make_writer(settings, on_dead_letter=letters.append) as writer:
        with pytest.raises(StorageWriteError, match=message) as raised:
            writer.write(points(10))
        assert writer.stats.snapshot().retries == 0
    assert raised.value.points == 10 and letters == []


def test_5xx_and_429_are_retried_with_backoff(stack: StackHandle, influx: InfluxSettings) -> None:
    with FaultyProxy(stack.influx_port, [503, 500, 429]) as proxy:
        settings = dataclasses.replace(influx, url=proxy.url, retry_initial_delay_s=0.05)
        with make_writer(settings) as writer:
            started = time.monotonic()
            assert writer.write(points(100, "flaky")).points == 100
            elapsed = time.monotonic() - started
            assert writer.stats.snapshot().retries == 3
        assert proxy.requests == 4
    assert elapsed >= 0.05 * 0.8 + 0.1 * 0.8 + 0.2 * 0.8  # backoff 0.05, 0.1, 0.2 s with 20 % jitter
    assert count(influx, "flaky") == 100


def test_retries_are_bounded(stack: StackHandle, influx: InfluxSettings) -> None:
    with FaultyProxy(stack.influx_port, [503] * 10) as proxy:
        settings = dataclasses.replace(influx, url=proxy.url, max_retries=2, retry_initial_delay_s=0.01)
        with make_writer(settings) as writer, pytest.raises(StorageWriteError, match="after 3 attempts") as raised:
            writer.write(points(10, "bounded"))
        assert proxy.requests == 3
    assert raised.value.points == 10


def test_total_retry_time_is_capped(influx: InfluxSettings) -> None:
    settings = dataclasses.replace(
        influx,
        url="http://127.0.0.1:9",
        max_retries=1000,
        retry_initial_delay_s=0.1,
        retry_max_delay_s=0.2,
        retry_max_total_s=1.0,
        timeout_s=0.5,
    )
    started = time.monotonic()
    with make_writer(settings) as writer, pytest.raises(StorageWriteError, match="ConnectionRefused"):
        writer.write(points(1))
    assert time.monotonic() - started < 2.0


class _PauseAfter(Transport):
    """The real 1.x transport, pausing the writer after `n` acknowledged batches until the test says go."""

    def __init__(self, inner: V1Transport, n: int) -> None:
        self.inner, self.n = inner, n
        self.paused, self.go = threading.Event(), threading.Event()
        self.acks = 0

    def post(self, body: bytes, precision: Precision, rp: str) -> Response:
        response = self.inner.post(body, precision, rp)
        if response.status < 300:
            self.acks += 1
            if self.acks == self.n:
                self.paused.set()
                self.go.wait(30)
        return response

    def describe(self, rp: str) -> str:
        return self.inner.describe(rp)

    def close(self) -> None:
        self.inner.close()


def test_influxdb_stopped_mid_write_every_point_lands_exactly_once(private_stack: StackHandle) -> None:
    settings = fresh_db(
        private_stack,
        batch_size=1_000,
        max_retries=100,
        retry_initial_delay_s=0.1,
        retry_max_delay_s=0.5,
        retry_max_total_s=60,
        timeout_s=5,
    )
    transport = _PauseAfter(V1Transport(settings), n=5)
    writer = Writer(settings, transport)
    total = 50_000
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = writer.write(points(total, "outage"))
        except Exception as err:  # reported below
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    assert transport.paused.wait(30), "the writer never got going"
    private_stack.influxdb.stop()  # InfluxDB goes away in the middle of the write
    transport.go.set()
    time.sleep(1.5)  # the writer meets connection errors and retries
    assert writer.stats.snapshot().retries > 0 and thread.is_alive()
    private_stack.influxdb.start(detach=True)
    thread.join(60)
    writer.close()
    assert "error" not in outcome, outcome
    assert outcome["result"].points == total  # type: ignore[attr-defined]
    with QueryClient(settings) as client:
        [series] = client.query(
            "SELECT count(seq), count(distinct(seq)), sum(seq) FROM {m}", {"m": ident("raw", "outage")}
        )
    assert series.values[0][1:] == (total, total, total * (total - 1) // 2)


def test_close_fails_a_write_to_a_hung_influxdb_at_once(private_stack: StackHandle) -> None:
    """InfluxDB frozen (SIGSTOP: the kernel accepts, nothing answers), a write waiting on its kept-alive
    connection: `close()` (a shutdown) fails it now, not after `timeout_s`, and does not resend it."""
    settings = fresh_db(private_stack, timeout_s=60, max_retries=5)
    writer = make_writer(settings)
    writer.write(points(10, "hung"))  # the connection the next write reuses
    pid = private_stack.influxdb.running_pid()
    assert pid is not None
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = writer.write(points(10, "hung", start_ms=NOW_MS - 60_000))
        except StorageWriteError as err:
            outcome["error"] = err

    os.kill(pid, signal.SIGSTOP)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), f"the write did not wait on the frozen InfluxDB: {outcome}"
        started = time.monotonic()
        writer.close()
        thread.join(5)
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not thread.is_alive() and took < 2, f"close() took {took:.1f} s"
    assert "was closed" in str(outcome["error"])
