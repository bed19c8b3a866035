"""InfluxQL with bound parameters, and typed results.

    with QueryClient(settings) as client:
        series = client.query(
            "SELECT mean({field}) FROM {m} WHERE city = {city} AND time >= {since} GROUP BY time(1h), sensor_id",
            {"field": ident("pm25"), "m": ident(settings.raw_rp, "air_quality"), "city": "phuket",
             "since": datetime(2026, 1, 1, tzinfo=UTC)},
        )

Placeholders are `{name}`; the value's type decides how it is written, so a
value can never become InfluxQL syntax:

| value                          | written as                                   |
|--------------------------------|----------------------------------------------|
| `str`                          | string literal `'...'` (`\\`, `'`, newline escaped) |
| `ident("rp", "measurement")`   | identifiers `"rp"."measurement"` (`\\`, `"`, newline escaped) |
| list/tuple of `ident(...)`     | identifiers joined by `, `                   |
| `regex("^pkt-")`               | regex literal `/^pkt-/` (`/` escaped)        |
| `int`, `float`, `bool`         | number (finite only), `true`/`false`        |
| `datetime` (with time zone)    | RFC 3339 UTC string literal                  |
| `timedelta`                    | duration literal (`90s`, `1h`, `250ms`)      |

Anything else, a missing or unused parameter, a format spec, or a
placeholder written inside quotes (`'{city}'`) raises `QueryError`. Grafana
macros such as `$timeFilter` pass through untouched.

The same `/query` endpoint serves 1.x (basic auth) and, through the v1
compatibility API, 2.x and 3.x (token auth, DBRP mapping).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import string
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from storage.errors import QueryError
from storage.settings import InfluxSettings

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Identifier:
    """One or more identifiers joined by dots: `ident("raw", "air_quality")` -> `"raw"."air_quality"`."""

    parts: tuple[str, ...]


@dataclass(frozen=True)
class Regex:
    """A regular expression literal (RE2 syntax, as InfluxDB uses)."""

    pattern: str


def ident(*parts: str) -> Identifier:
    if not parts or not all(isinstance(part, str) and part for part in parts):
        raise QueryError(f"an identifier needs non-empty str parts, got {parts!r}")
    return Identifier(tuple(parts))


def regex(pattern: str) -> Regex:
    if not isinstance(pattern, str):
        raise QueryError(f"a regex pattern must be a str, got {type(pattern).__name__}")
    return Regex(pattern)


def quote_ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_string(value: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def quote_regex(pattern: str) -> str:
    """A `/.../` regex literal; InfluxQL unescapes only `\\/`, so everything else reaches RE2 as written."""
    # A trailing backslash would escape the closing slash; a non-capturing group keeps the meaning.
    if pattern.endswith("\\"):
        pattern = f"(?:{pattern})"
    return "/" + pattern.replace("/", "\\/").replace("\n", "\\n") + "/"


def format_duration(value: timedelta) -> str:
    """An InfluxQL duration literal in the largest exact unit."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if micros <= 0:
        raise QueryError(f"a duration must be positive, got {value}")
    for unit, size in (
        ("w", 604_800_000_000),
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ):
        if micros % size == 0:
            return f"{micros // size}{unit}"
    return f"{micros}u"


def format_time(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise QueryError(f"a datetime parameter needs a time zone, got {value.isoformat()}")
    return quote_string(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def format_value(value: object) -> str:
    """One parameter as InfluxQL text (see the module docstring)."""
    if isinstance(value, Identifier):
        return ".".join(quote_ident(part) for part in value.parts)
    if isinstance(value, Regex):
        return quote_regex(value.pattern)
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QueryError(f"a float parameter must be finite, got {value!r}")
        return repr(float(value))
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, list | tuple) and value and all(isinstance(v, Identifier) for v in value):
        return ", ".join(format_value(v) for v in value)
    raise QueryError(f"unsupported parameter type {type(value).__name__}: {value!r}")


_formatter = string.Formatter()


def _quote_state(text: str, state: str) -> str:
    """The quote the template is inside after `text` ("" outside, "'" or '"' inside), starting in `state`."""
    escaped = False
    for char in text:
        if state:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == state:
                state = ""
        elif char in ("'", '"'):
            state = char
    return state


def render(template: str, params: Mapping[str, object] | None = None) -> str:
    """The statement with each `{name}` replaced by its parameter, quoted by type."""
    params = params or {}
    out: list[str] = []
    used: set[str] = set()
    try:
        pieces = list(_formatter.parse(template))
    except ValueError as err:
        raise QueryError(f"bad query template: {err}") from None
    state = ""
    for index, (literal, name, spec, conversion) in enumerate(pieces):
        out.append(literal)
        state = _quote_state(literal, state)
        if name is None:
            continue
        if not name.isidentifier():
            raise QueryError(f"placeholder {{{name}}} must be a plain name")
        if spec or conversion:
            raise QueryError(f"placeholder {{{name}}} must not have a format spec or conversion")
        after = pieces[index + 1][0][:1] if index + 1 < len(pieces) else ""
        if state or literal[-1:] == "/" or after == "/":
            raise QueryError(f"placeholder {{{name}}} must not be quoted in the template; the value type quotes it")
        if name not in params:
            raise QueryError(f"no value for placeholder {{{name}}}")
        out.append(format_value(params[name]))
        used.add(name)
    if state:
        raise QueryError("the query template has an unterminated quote")
    unused = set(params) - used
    if unused:
        raise QueryError(f"unused parameter(s): {', '.join(sorted(unused))}")
    return "".join(out)


@dataclass(frozen=True)
class Series:
    """One series of a result: measurement name, the GROUP BY tags, column names and rows.

    The `time` column holds timezone-aware UTC datetimes (microsecond precision)
    unless the query asked for raw nanosecond integers.
    """

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[tuple[Any, ...]] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column, with the series tags added."""
        return [{**self.tags, **dict(zip(self.columns, row, strict=True))} for row in self.values]

    def column(self, name: str) -> list[Any]:
        index = self.columns.index(name)
        return [row[index] for row in self.values]


def ns_to_datetime(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def parse_results(payload: Mapping[str, Any], *, raw_times: bool = False) -> list[Series]:
    """Series of every statement of a `/query` JSON answer; raises `QueryError` for a statement error."""
    if "error" in payload:
        raise QueryError(f"InfluxDB: {payload['error']}")
    series: list[Series] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise QueryError(f"InfluxDB: {result['error']}")
        for item in result.get("series", []):
            columns = list(item.get("columns", []))
            rows = [tuple(row) for row in item.get("values", [])]
            if not raw_times and "time" in columns:
                index = columns.index("time")
                rows = [
                    (*row[:index], ns_to_datetime(row[index]), *row[index + 1 :])
                    if isinstance(row[index], int)
                    else row
                    for row in rows
                ]
            series.append(Series(item.get("name", ""), dict(item.get("tags") or {}), columns, rows))
    return series


class QueryClient:
    """Runs InfluxQL over one keep-alive HTTP connection (thread-safe; a lock serialises queries)."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        parsed = urllib.parse.urlsplit(settings.url)
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or (443 if self._https else 80)
        self._path = parsed.path.rstrip("/") + "/query"
        self._headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if settings.token:
            self._headers["Authorization"] = f"Token {settings.token}"
        elif settings.username:
            credentials = f"{settings.username}:{settings.password}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def query(
        self,
        template: str,
        params: Mapping[str, object] | None = None,
        *,
        db: str | None = None,
        rp: str | None = None,
        raw_times: bool = False,
    ) -> list[Series]:
        """Run a statement (or `;`-separated statements) with bound parameters; returns all series."""
        statement = render(template, params)
        return parse_results(self.raw(statement, db=db, rp=rp), raw_times=raw_times)

    def execute(self, template: str, params: Mapping[str, object] | None = None, *, db: str | None = None) -> None:
        """Run statements for their effect (CREATE, ALTER, DROP, ...); raises `QueryError` on an error."""
        parse_results(self.raw(render(template, params), db=db))

    def raw(self, statement: str, *, db: str | None = None, rp: str | None = None) -> dict[str, Any]:
        """POST an already rendered statement; the JSON answer as is."""
        form = {"q": statement, "db": db if db is not None else self.settings.db, "epoch": "ns"}
        if rp:
            form["rp"] = rp
        body = urllib.parse.urlencode(form).encode()
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                if self._conn is None:
                    cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                    self._conn = cls(self._host, self._port, timeout=self.settings.timeout_s)
                try:
                    self._conn.request("POST", self._path, body=body, headers=self._headers)
                    resp = self._conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as err:
                    self._close()
                    if reused and attempt == 1:
                        continue
                    raise QueryError(f"InfluxDB at {self.settings.url} unreachable: {err}") from err
                if resp.will_close:
                    self._close()
                break
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {"error": data[:300].decode("utf-8", "replace")}
        if resp.status >= 300:
            message = payload.get("error") or payload.get("message") or data[:300].decode("utf-8", "replace")
            raise QueryError(f"InfluxDB answered HTTP {resp.status} to a query: {message}")
        logger.debug("query on %s: %s", self.settings.url, statement[:200])
        return payload

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def query(
    settings: InfluxSettings, template: str, params: Mapping[str, object] | None = None, **kwargs: Any
) -> list[Series]:
    """One-off `QueryClient(settings).query(...)`."""
    with QueryClient(settings) as client:
        return client.query(template, params, **kwargs)
