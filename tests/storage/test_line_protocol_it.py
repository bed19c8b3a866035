"""Property: whatever text a vendor puts into a name or value, the real InfluxDB 1.6.7 stores exactly
that text, or the encoder refuses the point. Nothing can add a point, a tag or a field."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.line_protocol import LineProtocolError, Point, encode_line
from storage.settings import InfluxSettings
from storage.writer import Writer, make_writer
from tests.servers import StackHandle
from tests.storage.conftest import fresh_db

pytestmark = pytest.mark.integration

# The characters line protocol and InfluxQL treat specially, Thai text, and any other Unicode scalar.
SPECIAL = list(" ,=\"'\\\n\r\t\x00#/{}")
THAI = list("เชียงใหม่ภูเก็ต")
CHARS = st.one_of(st.sampled_from(SPECIAL), st.sampled_from(THAI), st.characters(codec="utf-8"))
# Half of the examples are dense in escapes: backslashes next to separators, quotes and newlines.
ESCAPES = st.sampled_from(list('\\\\ ,="ab#'))
TEXT = st.one_of(st.text(CHARS, min_size=0, max_size=12), st.text(ESCAPES, min_size=1, max_size=8))
T0 = time.time_ns() // 1_000_000 - 3_600_000  # an hour ago, in ms: inside the raw retention
EXAMPLES = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Db:
    """The test database; a plain repr so that Hypothesis's failure report shows no password."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self.db = settings.db

    def __repr__(self) -> str:
        return f"Db({self.db!r})"


@pytest.fixture(scope="module")
def db(stack: StackHandle) -> Db:
    return Db(fresh_db(stack))


@pytest.fixture(scope="module")
def writer(db: Db) -> Iterator[Writer]:
    with make_writer(db.settings) as writer:
        yield writer


def accepted(points: list[Point]) -> list[Point]:
    """The points the encoder takes; a refusal must be a LineProtocolError."""
    ok = []
    for point in points:
        try:
            encode_line(point)
        except LineProtocolError:
            continue
        ok.append(point)
    return ok


def ms(rfc3339: str) -> int:
    return round(datetime.fromisoformat(rfc3339).timestamp() * 1000)


def select(stack: StackHandle, db: str, statement: str) -> list[dict[str, Any]]:
    """Series of a query through the raw HTTP API (independent of storage.query)."""
    result = stack.influx_query(statement, db=db)["results"][0]
    assert "error" not in result, result
    series: list[dict[str, Any]] = result.get("series", [])
    return series


@EXAMPLES
@given(pairs=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4))
def test_tag_keys_and_values_round_trip_or_are_refused(
    stack: StackHandle, db: Db, writer: Writer, pairs: list[tuple[str, str]]
) -> None:
    run = secrets.token_hex(6)
    points = [
        Point("lp_tags", {"run": run, "i": str(i), key: value}, {"v": float(i)}, T0 + i, "ms")
        for i, (key, value) in enumerate(pairs)
        if key not in ("run", "i")
    ]
    points = [*accepted(points), Point("lp_tags", {"run": run, "i": "sentinel"}, {"v": -1.0}, T0 - 1, "ms")]
    result = writer.write(points)
    assert result.points == len(points) and not result.dead_letters

    series = select(stack, db.db, f'SELECT * FROM "lp_tags" WHERE "run" = \'{run}\' GROUP BY *')
    stored = sorted(
        (tuple(sorted((k, v) for k, v in s["tags"].items() if v != "")), s["columns"], [ms(t), v])
        for s in series
        for t, v in s["values"]
    )
    expected = sorted((tuple(sorted(p.tags.items())), ["time", "v"], [p.time, p.fields["v"]]) for p in points)
    assert stored == expected


@EXAMPLES
@given(fields=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4))
def test_field_keys_and_string_values_round_trip_or_are_refused(
    stack: StackHandle, db: Db, writer: Writer, fields: list[tuple[str, str]]
) -> None:
    run = secrets.token_hex(6)
    points = [
        Point("lp_fields", {"run": run, "i": str(i)}, {"n": float(i), key: value}, T0 + i, "ms")
        for i, (key, value) in enumerate(fields)
        if key != "n"
    ]
    points = [*accepted(points), Point("lp_fields", {"run": run, "i": "sentinel"}, {"n": -1.0}, T0 - 1, "ms")]
    result = writer.write(points)
    assert result.points == len(points) and not result.dead_letters

    series = select(stack, db.db, f'SELECT * FROM "lp_fields" WHERE "run" = \'{run}\' GROUP BY *')
    stored = {}
    for s in series:
        assert len(s["values"]) == 1, s
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        stored[s["tags"]["i"]] = {k: v for k, v in row.items() if k != "time" and v is not None}
    assert stored == {p.tags["i"]: dict(p.fields) for p in points}


@EXAMPLES
@given(names=st.lists(TEXT, min_size=1, max_size=3))
def test_measurement_names_round_trip_or_are_refused(
    stack: StackHandle, db: Db, writer: Writer, names: list[str]
) -> None:
    run = secrets.token_hex(6)
    points = accepted([Point(name, {"run": run}, {"v": 1.0}, T0, "ms") for name in names])
    points.append(Point("lp_sentinel", {"run": run}, {"v": 1.0}, T0, "ms"))
    assert writer.write(points).points == len(points)

    series = select(stack, db.db, f"SELECT * FROM /.*/ WHERE \"run\" = '{run}'")
    assert sorted(s["name"] for s in series) == sorted({p.measurement for p in points})
    listed = {row[0] for s in select(stack, db.db, "SHOW MEASUREMENTS") for row in s["values"]}
    assert {p.measurement for p in points} <= listed
