"""The 2.x/3.x path (influxdb-client, bucket "{db}/{rp}", token auth) against the real InfluxDB 1.6.7,
through the test-only 1.8-style `/api/v2/write` adapter."""

from __future__ import annotations

import dataclasses
import time

import pytest

from storage.errors import StorageWriteError
from storage.line_protocol import Point, encode
from storage.query import QueryClient, ident
from storage.settings import InfluxSettings
from storage.transports import V2Transport
from storage.writer import DeadLetter, make_writer
from tests.storage.v2_compat_proxy import V2CompatProxy

pytestmark = pytest.mark.integration

T0 = time.time_ns() // 1_000_000 - 3_600_000


def sample(n: int, measurement: str) -> list[Point]:
    return [
        Point(measurement, {"sensor_id": f"s{i % 7}"}, {"v": float(i), "s": f'q"{i}\\'}, T0 + i, "ms") for i in range(n)
    ]


def test_make_writer_picks_the_v2_path_for_a_token(influx_v2: InfluxSettings) -> None:
    with make_writer(influx_v2) as writer:
        assert isinstance(writer._transport, V2Transport)
        assert "bucket=" + influx_v2.db + "/raw" in writer.describe()


@pytest.mark.parametrize("gzip", [True, False])
def test_v2_confirmed_write_lands_in_the_bucket_rp(
    influx_v2: InfluxSettings, v2_proxy: V2CompatProxy, gzip: bool
) -> None:
    before = v2_proxy.writes
    settings = dataclasses.replace(influx_v2, batch_size=400, gzip=gzip)
    with make_writer(settings, rp=settings.rollup_rp) as writer:
        result = writer.write(sample(1_000, "v2m"))
    assert result.points == 1_000 and v2_proxy.writes - before == 3
    # The v1 /query compatibility endpoint with token auth reads it back.
    with QueryClient(influx_v2) as client:
        [series] = client.query("SELECT count(v), last(s) FROM {m}", {"m": ident("rollup", "v2m")})
    assert series.values[0][1:] == (1_000, 'q"999\\')


def test_v2_precisions(influx_v2: InfluxSettings) -> None:
    t_s = T0 // 1000
    with make_writer(influx_v2) as writer:
        for precision, t in (("s", t_s), ("ms", t_s * 1000 + 1), ("us", t_s * 10**6 + 2), ("ns", t_s * 10**9 + 3)):
            writer.write([Point("prec", {"p": precision}, {"v": 1.0}, t, precision)])  # type: ignore[arg-type]
    with QueryClient(influx_v2) as client:
        series = client.query("SELECT v FROM {m} GROUP BY p", {"m": ident("raw", "prec")}, raw_times=True)
    assert {s.tags["p"]: s.values[0][0] for s in series} == {
        "s": t_s * 10**9,
        "ms": t_s * 10**9 + 1_000_000,
        "us": t_s * 10**9 + 2_000,
        "ns": t_s * 10**9 + 3,
    }


def test_v2_refused_points_are_bisected_to_dead_letters(influx_v2: InfluxSettings) -> None:
    letters: list[DeadLetter] = []
    batch = sample(100, "v2bis")
    batch[60] = batch[60]._replace(fields={"v": "not a float"})
    with make_writer(influx_v2, on_dead_letter=letters.append) as writer:
        writer.write(batch[:1])
        result = writer.write(batch)
    assert result.points == 99
    assert [letter.line for letter in letters] == [encode([batch[60]]).rstrip(b"\n")]
    assert letters[0].status == 400 and "conflict" in letters[0].reason


def test_v2_bad_token_raises_without_retry(influx_v2: InfluxSettings) -> None:
    with make_writer(dataclasses.replace(influx_v2, token="admin:wrong")) as writer:
        with pytest.raises(StorageWriteError, match="HTTP 401"):
            writer.write(sample(3, "v2auth"))
        assert writer.stats.snapshot().retries == 0


def test_v2_unreachable_is_retried_then_raises(influx_v2: InfluxSettings) -> None:
    settings = dataclasses.replace(influx_v2, url="http://127.0.0.1:9", max_retries=2, retry_initial_delay_s=0.01)
    with make_writer(settings) as writer:
        with pytest.raises(StorageWriteError, match="after 3 attempts"):
            writer.write(sample(3, "v2down"))
        assert writer.stats.snapshot().retries == 2


def test_v2_writes_in_batches(influx_v2: InfluxSettings) -> None:
    with make_writer(dataclasses.replace(influx_v2, batch_size=300)) as writer:
        assert writer.write(sample(1_000, "v2buf")).points == 1_000
    with QueryClient(influx_v2) as client:
        [series] = client.query("SELECT count(v) FROM {m}", {"m": ident("raw", "v2buf")})
    assert series.values[0][1] == 1_000
