"""Line protocol encoding: escaping, types, precision, and refusal of what InfluxDB cannot store."""

from __future__ import annotations

import pytest

from storage.line_protocol import Encoder, LineProtocolError, Point, encode, encode_line, split_lines


def test_escapes_each_part_by_its_own_rules() -> None:
    point = Point(
        "air quality,x",
        {"site name": "Old Town, Phuket=1", "city": 'a"b'},
        {"pm 2,5=": 1.5, "note": 'say "hi" \\ bye', "n": 3, "ok": True},
        1764028800000,
        "ms",
    )
    assert encode_line(point) == (
        'air\\ quality\\,x,city=a"b,site\\ name=Old\\ Town\\,\\ Phuket\\=1 '
        'pm\\ 2\\,5\\==1.5,note="say \\"hi\\" \\\\ bye",n=3i,ok=true 1764028800000'
    )


def test_tags_are_sorted_by_key_and_thai_text_is_utf8() -> None:
    line = encode([Point("m", {"z": "1", "a": "เชียงใหม่"}, {"v": 1.0}, 5)])
    assert line == "m,a=เชียงใหม่,z=1 v=1.0 5\n".encode()


def test_floats_round_trip_exactly_and_ints_get_i() -> None:
    values = [0.1, 1e16, 1.5e-07, -0.0, 123456789.123456789, 2.0**60]
    line = encode_line(Point("m", {}, {f"f{i}": v for i, v in enumerate(values)} | {"i": -(2**63)}))
    parsed = dict(part.split("=") for part in line.split(" ")[1].split(","))
    assert [float(parsed[f"f{i}"]) for i in range(len(values))] == values
    assert parsed["f3"] == "-0.0"
    assert parsed["i"] == f"{-(2**63)}i"


def test_float_cache_keeps_types_apart() -> None:
    encoder = Encoder()
    lines = [encoder.line(Point("m", {}, {"v": v})) for v in (1.0, 1, True, 1.0, 0.0, -0.0)]
    assert [line.split("=")[1] for line in lines] == ["1.0", "1i", "true", "1.0", "0.0", "-0.0"]


def test_string_field_may_contain_newlines() -> None:
    assert encode_line(Point("m", {}, {"s": "a\nb"}, 1)) == 'm s="a\nb" 1'


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        (Point("", {}, {"v": 1.0}), "measurement is empty"),
        (Point("#m", {}, {"v": 1.0}), "starts with '#'"),
        (Point("\tm", {}, {"v": 1.0}), "starts with"),
        (Point("m\n", {}, {"v": 1.0}), "newline"),
        (Point("m", {"t": ""}, {"v": 1.0}), "is empty"),
        (Point("m", {"": "x"}, {"v": 1.0}), "tag key is empty"),
        (Point("m", {"t": "a\nb"}, {"v": 1.0}), "newline"),
        (Point("m", {"t": "ends\\"}, {"v": 1.0}), "backslash"),
        (Point("m", {"t": "a\\ b"}, {"v": 1.0}), "backslash"),
        (Point("m", {"t": "a\\,b"}, {"v": 1.0}), "backslash"),
        (Point("m", {"k\\": "x"}, {"v": 1.0}), "backslash"),
        (Point("m", {"time": "x"}, {"v": 1.0}), "reserved"),
        (Point("m", {"_field": "x"}, {"v": 1.0}), "reserved"),
        (Point("m", {}, {}), "no fields"),
        (Point("m", {}, {"time": 1.0}), "reserved"),
        (Point("m", {}, {'a\\"b': 1.0}), "backslash"),
        (Point("m", {}, {"\x00v": 1.0}), "starts with"),
        (Point("m", {}, {"v": float("nan")}), "not finite"),
        (Point("m", {}, {"v": float("inf")}), "not finite"),
        (Point("m", {}, {"v": 2**63}), "outside int64"),
        (Point("m", {}, {"v": None}), "unsupported type"),  # type: ignore[dict-item]
        (Point("m", {}, {"v": "x" * 65_536}), "exceeds"),
        (Point("m", {}, {"v": "\ud800"}), "not valid Unicode"),
        (Point("m", {"t": "\udfff"}, {"v": 1.0}), "not valid Unicode"),
        (Point("m", {"t": "x" * 65_535}, {"v": 1.0}), "over 65535"),
        (Point("m", {"t": 1}, {"v": 1.0}), "must be a str"),  # type: ignore[dict-item]
        (Point("m", {}, {"v": 1.0}, 9_223_372_036_854_775_807), "outside the range"),
        (Point("m", {}, {"v": 1.0}, 9_223_372_036_855, "ms"), "outside the range"),
        (Point("m", {}, {"v": 1.0}, 1.5), "must be an int"),  # type: ignore[arg-type]
        (Point("m", {}, {"v": 1.0}, 1, "m"), "precision"),  # type: ignore[arg-type]
    ],
)
def test_refuses_what_influxdb_cannot_store(point: Point, reason: str) -> None:
    with pytest.raises(LineProtocolError, match=reason.replace("(", r"\(")):
        encode_line(point)


def test_accepts_backslashes_that_round_trip() -> None:
    assert encode_line(Point("a\\b", {"t": "x\\y\\\\z"}, {"k\\v": 1.0})) == "a\\b,t=x\\y\\\\z k\\v=1.0"


def test_batch_of_mixed_precisions_is_refused_by_encode() -> None:
    with pytest.raises(LineProtocolError, match="several precisions"):
        encode([Point("m", {}, {"v": 1.0}, 1, "ms"), Point("m", {}, {"v": 1.0}, 1, "s")])


def test_split_lines_keeps_newlines_inside_strings() -> None:
    data = b'm s="a\nb" 1\nm,t=x\\ y v=1 2\n\n  \nm s="q\\"\n" 3\n'
    assert split_lines(data) == [b'm s="a\nb" 1', b"m,t=x\\ y v=1 2", b'm s="q\\"\n" 3']
    assert split_lines(b"a v=1\nb v=2") == [b"a v=1", b"b v=2"]
