"""Queries against the real InfluxDB: bound values match exactly and injection attempts stay data."""

from __future__ import annotations

import time

import pytest

from storage.errors import QueryError
from storage.line_protocol import LineProtocolError, Point, encode_line
from storage.query import QueryClient, ident, regex
from storage.settings import InfluxSettings
from storage.writer import make_writer

pytestmark = pytest.mark.integration

T0 = time.time_ns() // 1_000_000 - 3_600_000
ATTACKS = [
    "x' OR city =~ /.*/ OR city = 'y",
    "x\\' OR 1=1 --",
    "x'; DROP DATABASE smartcity",
    'x" OR "a"="a',
    "line\nbreak",
    "back\\slash\\",
    "เชียงใหม่ ' \" \\ /",
]


@pytest.fixture
def loaded(influx: InfluxSettings) -> InfluxSettings:
    """One point per value: the value as string field `s` (any text) and as tag `city` where representable."""
    points = []
    for i, value in enumerate(["phuket", "chiangmai", *ATTACKS]):
        point = Point("q", {"n": str(i), "city": value}, {"v": float(i), "s": value}, T0 + i, "ms")
        try:
            encode_line(point)
        except LineProtocolError:
            point = Point("q", {"n": str(i)}, {"v": float(i), "s": value}, T0 + i, "ms")
        points.append(point)
    with make_writer(influx) as writer:
        writer.write(points)
    return influx


@pytest.mark.parametrize("value", ATTACKS)
def test_string_values_match_exactly_and_never_inject(loaded: InfluxSettings, value: str) -> None:
    with QueryClient(loaded) as client:
        series = client.query("SELECT s FROM {m} WHERE s = {value}", {"m": ident("raw", "q"), "value": value})
        assert [row[1] for s in series for row in s.values] == [value]
        by_tag = client.query("SELECT s FROM {m} WHERE city = {value}", {"m": ident("raw", "q"), "value": value})
        assert [row[1] for s in by_tag for row in s.values] in ([value], [])
        assert loaded.db in {row[0] for s in client.query("SHOW DATABASES", db="") for row in s.values}
        assert sum(len(s.values) for s in client.query("SELECT s FROM {m}", {"m": ident("raw", "q")})) == 2 + len(
            ATTACKS
        )


@pytest.mark.parametrize("name", ATTACKS)
def test_identifiers_are_quoted(loaded: InfluxSettings, name: str) -> None:
    with QueryClient(loaded) as client:
        assert client.query("SELECT {f} FROM {m}", {"f": ident(name), "m": ident("raw", "q")}) == []
        assert client.query("SELECT v FROM {m}", {"m": ident("raw", name)}) == []


def test_regex_parameters(loaded: InfluxSettings) -> None:
    def matching(pattern: str) -> list[str]:
        with QueryClient(loaded) as client:
            series = client.query("SELECT s FROM {m} WHERE s =~ {r}", {"m": ident("raw", "q"), "r": regex(pattern)})
        return sorted(row[1] for s in series for row in s.values)

    assert matching("^(phuket|chiang)") == ["chiangmai", "phuket"]
    assert matching(" /$") == ["เชียงใหม่ ' \" \\ /"]
    assert matching("slash\\\\$") == ["back\\slash\\"]
    assert matching("^line\nbreak$") == ["line\nbreak"]
    assert matching("/\\.\\*/") == ["x' OR city =~ /.*/ OR city = 'y"]


def test_errors_raise_query_error(loaded: InfluxSettings) -> None:
    with QueryClient(loaded) as client:
        with pytest.raises(QueryError, match="error parsing query"):
            client.query("SELECT FROM")
        with pytest.raises(QueryError, match="database not found"):
            client.query("SELECT v FROM q", db="no_such_db")
    with (
        QueryClient(InfluxSettings(url="http://127.0.0.1:9")) as client,
        pytest.raises(QueryError, match="unreachable"),
    ):
        client.query("SHOW DATABASES")
