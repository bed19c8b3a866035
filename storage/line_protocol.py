"""InfluxDB line protocol: the `Point` record and its encoding, with full escaping.

    air_quality,city=phuket,district=kathu,sensor_id=pkt-aq-001 pm25=12.5,pm10=20.0 1764028800000

A line is `measurement[,tag=value...] field=value[,field=value...] [time]`.
Measurements escape comma and space; tag keys, tag values and field keys
escape comma, space and equals sign with a backslash; string field values are
double-quoted with backslash and double quote escaped; integers end in `i`.
Tags are written sorted by key, as InfluxDB stores them.

What line protocol cannot carry is refused with `LineProtocolError` rather
than written altered. Measured against InfluxDB 1.6.7 (and checked by
`tests/storage/test_line_protocol_it.py` against the real server):

- an empty measurement, tag key, tag value or field key (InfluxDB answers
  "missing tag value" or drops the key), and a point without fields;
- a newline in a measurement, tag key, tag value or field key (it ends the
  line; string field values may contain newlines);
- a backslash at the end of a name or right before a space, comma, equals
  sign or double quote: InfluxDB's tag scanner looks only at the previous
  byte while its line splitter reads backslash pairs, so such a name either
  fails to parse, comes back with a different number of backslashes, or
  shifts how the rest of the batch is split into lines;
- a measurement that starts with `#` (InfluxDB skips the line as a comment)
  or with a tab or NUL (stripped as leading whitespace), and a field key that
  starts with a tab or NUL;
- the keys `time` (refused by 1.x) and `_measurement`, `_field` (reserved in
  2.x and 3.x) as tag or field keys;
- a series key longer than 65,535 bytes, a string field value longer than
  65,535 bytes (the 2.x/3.x limit), non-finite floats, integers outside
  int64, timestamps outside +-9223372036854775806 ns, and text that is not
  valid Unicode (lone surrogates).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

from sensors.errors import SmartcityError

Precision = Literal["ns", "us", "ms", "s"]
FieldValue = float | int | bool | str

PRECISIONS: tuple[Precision, ...] = ("ns", "us", "ms", "s")
NS_PER_UNIT: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
MAX_KEY_BYTES = 65_535
MAX_STRING_FIELD_BYTES = 65_535
MAX_TIME_NS = 9_223_372_036_854_775_806
MIN_TIME_NS = -MAX_TIME_NS
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1
RESERVED_KEYS = frozenset({"time", "_measurement", "_field"})
# InfluxDB separates a series key from a field key with this when it checks the key length.
_FIELD_KEY_SEPARATOR_BYTES = 4

_BAD_BACKSLASH = re.compile(r'\\(?=[ ,="]|\Z)')
SERIES_CACHE_MAX = 200_000
# A series key longer than MAX_KEY_BYTES less this has each field key's length checked too.
MAX_FIELD_KEY_BYTES = 260
_FLOAT_CACHE_MAX = 100_000


class LineProtocolError(SmartcityError, ValueError):
    """A point that line protocol cannot represent exactly; it is refused, never altered."""


class Point(NamedTuple):
    """One point: measurement, tags, fields, and an optional time in `precision` units.

    Fields are `float`, `int` (written as integer), `bool` or `str`. Without a
    time, InfluxDB stamps the point with its own clock on arrival.
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time: int | None = None
    precision: Precision = "ns"


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str):
        raise LineProtocolError(f"{what} must be a str, got {type(name).__name__}: {name!r}")
    if not name:
        raise LineProtocolError(f"{what} is empty")
    if "\n" in name:
        raise LineProtocolError(f"{what} {name!r} contains a newline")
    if "\\" in name and _BAD_BACKSLASH.search(name):
        raise LineProtocolError(f"{what} {name!r} has a backslash at the end or before a space, comma, '=' or '\"'")
    try:
        name.encode()
    except UnicodeEncodeError as err:
        raise LineProtocolError(f"{what} {name!r} is not valid Unicode: {err.reason}") from None


def escape_measurement(name: str) -> str:
    """The measurement as written in a line; raises `LineProtocolError` if it cannot be represented."""
    _check_name("measurement", name)
    if name[0] in "#\t\x00":
        raise LineProtocolError(f"measurement {name!r} starts with {name[0]!r}")
    if "," in name or " " in name:
        name = name.replace(",", "\\,").replace(" ", "\\ ")
    return name


def escape_key(what: str, key: str) -> str:
    """A tag key, tag value or field key as written in a line."""
    _check_name(what, key)
    if "," in key or " " in key or "=" in key:
        key = key.replace(",", "\\,").replace(" ", "\\ ").replace("=", "\\=")
    return key


def _escape_tag_key(key: str) -> str:
    if key in RESERVED_KEYS:
        raise LineProtocolError(f"tag key {key!r} is reserved")
    return escape_key("tag key", key)


def _escape_field_key(key: str) -> str:
    if key in RESERVED_KEYS:
        raise LineProtocolError(f"field key {key!r} is reserved")
    escaped = escape_key("field key", key)
    if key[0] in "\t\x00":
        raise LineProtocolError(f"field key {key!r} starts with {key[0]!r}")
    return escaped


def escape_string_field(value: str) -> str:
    """A string field value, double-quoted."""
    try:
        size = len(value.encode())
    except UnicodeEncodeError as err:
        raise LineProtocolError(f"string field value {value[:40]!r} is not valid Unicode: {err.reason}") from None
    if size > MAX_STRING_FIELD_BYTES:
        raise LineProtocolError(f"string field value of {size} bytes exceeds {MAX_STRING_FIELD_BYTES}")
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def format_field_value(value: FieldValue) -> str:
    """A field value as written in a line (float, `123i`, `true`/`false`, or a quoted string)."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise LineProtocolError(f"float field value {value!r} is not finite")
        return repr(value)
    if kind is int:
        if not MIN_INT <= value <= MAX_INT:  # type: ignore[operator]
            raise LineProtocolError(f"integer field value {value} is outside int64")
        return f"{value}i"
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return escape_string_field(value)  # type: ignore[arg-type]
    # Subclasses (numpy scalars, IntEnum, ...) are accepted by their base type.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return format_field_value(int(value))
    if isinstance(value, float):
        return format_field_value(float(value))
    if isinstance(value, str):
        return escape_string_field(str(value))
    raise LineProtocolError(f"field value {value!r} has unsupported type {kind.__name__}")


class Encoder:
    """Encodes points into lines, caching the escaped series key of each (measurement, tags).

    A fleet repeats the same few thousand series, so after the first point of a
    sensor only its fields and time are formatted. Not thread-safe: give each
    thread its own encoder (the module-level `encode` functions use one each).
    """

    def __init__(self) -> None:
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, int]] = {}
        self._field_keys: dict[str, str] = {}
        self._floats: dict[float, str] = {}
        # Escaped tag keys and values: a fleet's series share a few keys and repeat their places' names.
        self._tag_keys: dict[str, str] = {}
        self._tag_values: dict[str, str] = {}

    def series_key(self, measurement: str, tags: Mapping[str, str]) -> tuple[str, int]:
        """The escaped `measurement,tag=value,...` prefix and its length in bytes (computed and cached)."""
        if not isinstance(tags, Mapping):
            raise LineProtocolError(f"tags of {measurement!r} must be a mapping, got {type(tags).__name__}")
        items = tuple(tags.items())
        parts = [escape_measurement(measurement)]
        escaped = []
        for key, value in items:
            if not isinstance(value, str):
                raise LineProtocolError(f"tag {key!r} value must be a str, got {type(value).__name__}: {value!r}")
            escaped.append((self._tag_key(key), self._tag_value(key, value)))
        escaped.sort(key=lambda kv: kv[0].encode())
        parts.extend(f"{k}={v}" for k, v in escaped)
        prefix = ",".join(parts)
        size = len(prefix.encode())
        if size > MAX_KEY_BYTES:
            raise LineProtocolError(f"series key of {measurement!r} is {size} bytes, over {MAX_KEY_BYTES}")
        if len(self._series) >= SERIES_CACHE_MAX:
            self._series.clear()
        result = (prefix, size)
        self._series[(measurement, items)] = result
        return result

    def _tag_key(self, key: str) -> str:
        escaped = self._tag_keys.get(key)
        if escaped is None:
            escaped = _escape_tag_key(key)
            if len(self._tag_keys) < 10_000:
                self._tag_keys[key] = escaped
        return escaped

    def _tag_value(self, key: str, value: str) -> str:
        escaped = self._tag_values.get(value)
        if escaped is None:  # a value is checked once; one that cannot be written is never cached
            escaped = escape_key(f"tag {key!r} value", value)
            if len(self._tag_values) >= SERIES_CACHE_MAX:
                self._tag_values.clear()
            self._tag_values[value] = escaped
        return escaped

    def field_key(self, key: str) -> str:
        escaped = self._field_keys.get(key)
        if escaped is None:
            if not isinstance(key, str):
                raise LineProtocolError(f"field key must be a str, got {type(key).__name__}: {key!r}")
            escaped = _escape_field_key(key) + "="
            if len(self._field_keys) < 10_000:
                self._field_keys[key] = escaped
        return escaped

    def float_fields(self, fields: Mapping[str, float]) -> str:
        """The fields part of a line, each value written as a float (`float(value)`, as `raw_point` does),
        with the field key and value caches of `add_lines`."""
        floats_get = self._floats.get
        field_keys = self._field_keys
        try:
            # An int or bool value finds the text of the float it equals (1 and True find "1.0").
            return ",".join([field_keys[k] + (floats_get(v) or self._value_text(float(v))) for k, v in fields.items()])
        except KeyError:
            return ",".join([self.field_key(k) + self._value_text(float(v)) for k, v in fields.items()])

    def line(self, point: Point) -> str:
        """One line without the trailing newline; time stays in the point's own precision."""
        out: dict[str, list[str]] = {}
        self.add_lines((point,), out)
        return next(iter(out.values()))[0]

    def add_lines(self, points: Iterable[Point], out: dict[str, list[str]]) -> int:
        """Append the line of each point to `out[point.precision]`; returns the number of points.

        The hot path of every writer: about 1.5-2 us per point on one core
        once series keys, field keys and repeated float values are cached.
        Raises `LineProtocolError` on the first point that cannot be written;
        the lines appended before it stay in `out`.
        """
        series = self._series
        series_key = self.series_key
        field_keys = self._field_keys
        floats = self._floats
        floats_get = floats.get
        value_text = self._value_text
        float_ = float
        int_ = int
        current_precision: str | None = None
        append = None
        time_min = time_max = 0
        count = 0
        for point in points:
            measurement, tags, fields, t, precision = point
            try:
                cached = series.get((measurement, tuple(tags.items())))
            except (AttributeError, TypeError):  # not a mapping, or unhashable values: series_key says why
                cached = None
            if cached is None:
                cached = series_key(measurement, tags)
            try:
                body = ",".join(
                    [
                        field_keys[k] + ((floats_get(v) if v.__class__ is float_ else None) or value_text(v))
                        for k, v in fields.items()
                    ]
                )
            except KeyError:
                body = self._fields_slow(measurement, fields)
            if not body:
                raise LineProtocolError(f"point of {measurement!r} has no fields")
            if cached[1] > MAX_KEY_BYTES - MAX_FIELD_KEY_BYTES:
                self._check_field_key_sizes(cached[1], fields)
            if precision is not current_precision:
                if precision not in NS_PER_UNIT:
                    raise LineProtocolError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
                current_precision = precision
                append = out.setdefault(precision, []).append
                time_max = MAX_TIME_NS // NS_PER_UNIT[precision]
                time_min = -time_max
            if t is None:
                append(f"{cached[0]} {body}")  # type: ignore[misc]
            elif t.__class__ is int_ and time_min <= t <= time_max:
                append(f"{cached[0]} {body} {t}")  # type: ignore[misc]
            else:
                append(f"{cached[0]} {body} {self._time_slow(t, precision, time_min, time_max)}")  # type: ignore[misc]
            count += 1
        return count

    def _value_text(self, value: FieldValue) -> str:
        text = format_field_value(value)
        # Cache reprs of floats: sensor values repeat (one decimal, bounded ranges). Zero is
        # left out so that 0.0 and -0.0 (equal as dict keys) keep their own text.
        if value.__class__ is float and value != 0.0 and len(self._floats) < _FLOAT_CACHE_MAX:
            self._floats[value] = text
        return text

    def _fields_slow(self, measurement: str, fields: Mapping[str, FieldValue]) -> str:
        if not isinstance(fields, Mapping):
            raise LineProtocolError(f"fields of {measurement!r} must be a mapping, got {type(fields).__name__}")
        return ",".join([self.field_key(k) + self._value_text(v) for k, v in fields.items()])

    @staticmethod
    def _check_field_key_sizes(key_size: int, fields: Mapping[str, FieldValue]) -> None:
        for key in fields:
            total = key_size + _FIELD_KEY_SEPARATOR_BYTES + len(key.encode())
            if total > MAX_KEY_BYTES:
                raise LineProtocolError(f"series key + field key {key!r} is {total} bytes, over {MAX_KEY_BYTES}")

    @staticmethod
    def _time_slow(t: object, precision: str, time_min: int, time_max: int) -> int:
        if isinstance(t, bool) or not isinstance(t, int):
            raise LineProtocolError(f"time must be an int in {precision}, got {t!r}")
        if not time_min <= t <= time_max:
            raise LineProtocolError(f"time {t} {precision} is outside the range InfluxDB stores")
        return int(t)

    def encode(self, points: Iterable[Point]) -> bytes:
        """Lines for `points`, newline-terminated, UTF-8; all points must have the same precision."""
        out: dict[str, list[str]] = {}
        self.add_lines(points, out)
        if not out:
            return b""
        if len(out) > 1:
            raise LineProtocolError(f"points of several precisions ({', '.join(out)}) cannot share one request")
        lines = next(iter(out.values()))
        lines.append("")
        return "\n".join(lines).encode()


def encode_line(point: Point) -> str:
    """One point as a line of line protocol (no trailing newline)."""
    return Encoder().line(point)


def encode(points: Iterable[Point]) -> bytes:
    """Points of one precision as newline-terminated line protocol."""
    return Encoder().encode(points)


def split_lines(data: bytes) -> list[bytes]:
    """Split line protocol into lines the way InfluxDB does (newlines inside quoted strings stay).

    A port of InfluxDB 1.x `scanLine`: a backslash skips the next byte, and a
    double quote toggles a string only in the fields part after an `=`. Empty
    lines are dropped; lines keep no trailing newline. Used to bisect a batch
    that InfluxDB refused, so speed matters less than agreement with the server.
    """
    if b'"' not in data and b"\\" not in data:
        return [line for line in data.split(b"\n") if line.strip(b" \t")]
    lines = []
    i = 0
    n = len(data)
    while i < n:
        start = i
        quoted = False
        fields = False
        equals = commas = 0
        while i < n:
            c = data[i]
            if c == 0x5C:  # backslash
                i += 2
                continue
            if c == 0x20:
                fields = True
            if fields:
                if not quoted and c == 0x3D:
                    i += 1
                    equals += 1
                    continue
                if not quoted and c == 0x2C:
                    i += 1
                    commas += 1
                    continue
                if c == 0x22 and equals > commas:
                    i += 1
                    quoted = not quoted
                    continue
            if c == 0x0A and not quoted:
                break
            i += 1
        line = data[start : min(i, n)]
        if line.strip(b" \t"):
            lines.append(line)
        i += 1
    return lines
