"""InfluxQL parameter binding: values are quoted by type and can never become syntax."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from storage.errors import QueryError
from storage.query import Series, ident, parse_results, regex, render


def test_values_are_rendered_by_type() -> None:
    statement = render(
        "SELECT {fields} FROM {m} WHERE city = {city} AND sensor_id =~ {ids} AND v > {low} AND n < {n} "
        "AND ok = {ok} AND time >= {since} - {span} GROUP BY time({step})",
        {
            "fields": [ident("pm25_mean"), ident('we"ird')],
            "m": ident("rollup", "air_quality_1h"),
            "city": "it's",
            "ids": regex("^pkt-/x"),
            "low": 1.5,
            "n": 3,
            "ok": True,
            "since": datetime(2026, 1, 1, 7, tzinfo=timezone(timedelta(hours=7))),
            "span": timedelta(hours=2),
            "step": timedelta(minutes=1),
        },
    )
    assert statement == (
        'SELECT "pm25_mean", "we\\"ird" FROM "rollup"."air_quality_1h" WHERE city = \'it\\\'s\' '
        "AND sensor_id =~ /^pkt-\\/x/ AND v > 1.5 AND n < 3 AND ok = true "
        "AND time >= '2026-01-01T00:00:00.000000Z' - 2h GROUP BY time(1m)"
    )


def test_grafana_macros_pass_through() -> None:
    assert render("SELECT mean(v) FROM {m} WHERE $timeFilter GROUP BY time($__interval)", {"m": ident("x")}) == (
        'SELECT mean(v) FROM "x" WHERE $timeFilter GROUP BY time($__interval)'
    )


@pytest.mark.parametrize(
    ("template", "params", "message"),
    [
        ("SELECT * FROM m WHERE a = '{x}'", {"x": "v"}, "must not be quoted"),
        ('SELECT * FROM "{x}"', {"x": "v"}, "must not be quoted"),
        ("SELECT * FROM m WHERE a = 'b {x} c'", {"x": "v"}, "must not be quoted"),
        ("SELECT * FROM m WHERE a =~ /{x}/", {"x": "v"}, "must not be quoted"),
        ("SELECT {x}", {}, "no value"),
        ("SELECT 1", {"x": 1}, "unused"),
        ("SELECT {x!r}", {"x": 1}, "conversion"),
        ("SELECT {x:>3}", {"x": 1}, "format spec"),
        ("SELECT {0}", {}, "plain name"),
        ("SELECT {x.y}", {"x": 1}, "plain name"),
        ("SELECT {x}", {"x": None}, "unsupported"),
        ("SELECT {x}", {"x": [1, 2]}, "unsupported"),
        ("SELECT {x}", {"x": float("nan")}, "finite"),
        ("SELECT {x}", {"x": datetime(2026, 1, 1)}, "time zone"),
        ("SELECT {x}", {"x": timedelta(0)}, "positive"),
        ("SELECT 'unterminated", {}, "unterminated"),
    ],
)
def test_misuse_is_refused(template: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        render(template, params)


def test_regex_ending_in_backslash_cannot_swallow_the_closing_slash() -> None:
    assert render("{r}", {"r": regex("a\\\\")}) == "/(?:a\\\\)/"


def test_results_are_typed_and_statement_errors_raise() -> None:
    payload = {
        "results": [
            {
                "statement_id": 0,
                "series": [
                    {
                        "name": "m",
                        "tags": {"city": "phuket"},
                        "columns": ["time", "v"],
                        "values": [[1_764_028_800_123_000_000, 1.5]],
                    }
                ],
            }
        ]
    }
    [series] = parse_results(payload)
    assert series == Series(
        "m", {"city": "phuket"}, ["time", "v"], [(datetime(2025, 11, 25, 0, 0, 0, 123000, UTC), 1.5)]
    )
    assert series.records() == [{"city": "phuket", "time": datetime(2025, 11, 25, 0, 0, 0, 123000, UTC), "v": 1.5}]
    with pytest.raises(QueryError, match="database not found"):
        parse_results({"results": [{"statement_id": 0, "error": "database not found: x"}]})
