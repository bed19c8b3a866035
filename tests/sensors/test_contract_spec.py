"""The vendor contract documents: valid AsyncAPI, JSON Schemas that agree with the decoder, a guide that
cannot drift, and `smartcity contract check` giving every example of the guide its stated outcome."""

from __future__ import annotations

import copy
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.cli import main
from sensors.contract import MALFORMED_REJECT_TOPIC, Accepted, Contract, RejectCode
from sensors.contract_examples import ACCEPTED, examples
from sensors.contract_guide import guide_examples, render_doc
from sensors.contract_spec import (
    SCHEMA_LIMITS,
    asyncapi_document,
    object_schema,
    schema_files,
    senml_schema,
    spec_files,
)
from sensors.registry import BUILTIN_DIR, Kind, Registry, Sensor, default_registry, load_registry

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "vendors.md"
ASYNCAPI_SCHEMA = json.loads((ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json").read_text())
REGISTRY = default_registry()


def run(args: list[str], capsys: pytest.CaptureFixture[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    """`smartcity ARGS` in this process, through the same entry point as the console script."""
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        code = main(args)
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


def asyncapi_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(ASYNCAPI_SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]


# -- AsyncAPI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", [None, "lanna-envirotech"])
def test_asyncapi_document_is_valid_against_the_official_schema(vendor: str | None) -> None:
    document = yaml.safe_load(spec_files(REGISTRY, vendor=vendor)["asyncapi.yaml"])
    assert asyncapi_errors(document) == []
    # The vendored schema really checks: an AsyncAPI 2.x style operation is refused.
    broken = copy.deepcopy(document)
    broken["operations"]["receive_rejects"]["action"] = "subscribe"
    assert asyncapi_errors(broken)


def test_asyncapi_describes_topics_operations_bindings_and_security() -> None:
    document = asyncapi_document(REGISTRY)
    channels, operations = document["channels"], document["operations"]
    for kind in REGISTRY.kinds.values():
        channel = channels[kind.id]
        assert channel["address"] == f"smartcity/v1/{{city}}/{kind.id}/{{sensor_id}}"
        assert set(channel["parameters"]) == {"city", "sensor_id"}
        assert set(channel["parameters"]["city"]["enum"]) == {s.city for s in REGISTRY.sensors_of(kind=kind.id)}
        send = operations[f"send_{kind.id}"]
        assert send["action"] == "send" and send["channel"] == {"$ref": f"#/channels/{kind.id}"}
        assert send["bindings"]["mqtt"]["qos"] == 1 and send["bindings"]["mqtt"]["retain"] is False
        messages = document["components"]["messages"]
        assert messages[f"{kind.id}.object"]["payload"]["schema"]["properties"]["values"]["properties"].keys() == {
            m.name for m in kind.metrics
        }
        assert messages[f"{kind.id}.senml"]["contentType"] == "application/senml+json"
    assert channels["rejects"]["address"] == "smartcity/dlq/v1/{city}/{kind}/{sensor_id}"
    assert channels["rejects_malformed"]["address"] == MALFORMED_REJECT_TOPIC
    assert operations["receive_rejects"]["action"] == "receive"
    assert document["components"]["securitySchemes"]["vendorAccount"]["type"] == "userPassword"
    assert {s["protocol"] for s in document["servers"].values()} == {"secure-mqtt", "mqtt"}


def test_a_vendor_document_lists_only_its_own_sensors() -> None:
    document = asyncapi_document(REGISTRY, vendor="binwise")
    assert set(document["channels"]) == {"waste_bin", "rejects", "rejects_malformed"}
    listed = document["channels"]["waste_bin"]["parameters"]["sensor_id"]["enum"]
    assert listed == [s.id for s in REGISTRY.sensors_of(vendor="binwise")]


# -- JSON Schemas -------------------------------------------------------------------------------


def test_schemas_are_valid_in_draft_2020_12_and_draft_07() -> None:
    files = schema_files(REGISTRY)
    assert len(files) == 2 * len(REGISTRY.kinds) + 1
    for schema in files.values():
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft7Validator.check_schema(schema)  # AsyncAPI embeds them under draft-07


def test_object_schema_carries_units_ranges_and_required_metrics() -> None:
    schema = object_schema(REGISTRY.kinds["parking"])
    values = schema["properties"]["values"]
    assert values["required"] == ["occupied"]
    assert values["properties"]["capacity"] | {"description": ""} == {
        "title": "capacity",
        "description": "",
        "type": "number",
        "minimum": 1,
        "maximum": 5000,
        "x-unit": "count",
    }


# The decoder judged so that no clock-relative rule can fire: every ts the decoder can parse
# (|ts| <= 1e15 ms, SenML |t| <= 1e12 s) is within 5 min of "now" and the retention.
NEUTRAL_CLOCK_MS = 10**15
neutral = Contract(REGISTRY, max_age_ms=3 * 10**15)
SENSORS: dict[str, Sensor] = {}
for _sensor in REGISTRY.sensors.values():
    SENSORS.setdefault(_sensor.kind, _sensor)
KINDS = sorted(SENSORS)
VALIDATORS = {
    (kind, form, cls.__name__): cls(schema)
    for kind in KINDS
    for form, schema in (("object", object_schema(REGISTRY.kinds[kind])), ("senml", senml_schema(REGISTRY.kinds[kind])))
    for cls in (jsonschema.Draft202012Validator, jsonschema.Draft7Validator)
}
OTHER_UNITS = [*sorted({m.unit for k in REGISTRY.kinds.values() for m in k.metrics}), "", "mg/m3"]


def assert_agree(kind: str, form: str, document: Any) -> None:
    payload = json.dumps(document).encode()
    decoded = neutral.decode(SENSORS[kind].topic, payload, NEUTRAL_CLOCK_MS)
    for (k, f, dialect), validator in VALIDATORS.items():
        if (k, f) == (kind, form):
            schema_ok = validator.is_valid(json.loads(payload))
            detail = "accepted" if isinstance(decoded, Accepted) else f"{decoded.code}: {decoded.detail}"
            assert schema_ok == isinstance(decoded, Accepted), f"{dialect} says {schema_ok}, decoder {detail}"


def chance(odds: int) -> st.SearchStrategy[bool]:
    """True one time in `odds` (hypothesis would otherwise favour the simplest branch, often the invalid one)."""
    return st.sampled_from([False] * (odds - 1) + [True])


def mostly(draw: st.DrawFn, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any], odds: int = 8) -> Any:
    """A valid value, or one time in `odds` a doubtful one (so a good share of the corpus is accepted)."""
    return draw(invalid if draw(chance(odds)) else valid)


def value_of(draw: st.DrawFn, metric: Any) -> Any:
    lo, hi = metric.min, metric.max
    edges = [lo, hi, int(lo), int(hi), lo - 0.001, hi + 0.001, lo - 1, hi * 2 + 1]
    doubtful: st.SearchStrategy[Any] = st.one_of(
        st.sampled_from(edges),
        st.integers(-(10**20), 10**20),  # no 400-digit integers: the decoder raises on them (see the report)
        st.sampled_from(["12", None, True, False, [], {}]),
    )
    return mostly(draw, st.floats(min_value=lo, max_value=hi), doubtful)


# RFC 3339 from valid parts, at most one of them then replaced by a doubtful one (a day 29-31 is valid
# or not by month and leap year). Offset minutes stay below 60: ingest also takes +00:99, a leniency
# of SCHEMA_LIMITS. No string ends in a newline: Python's `re.search` lets `$` match before one,
# ECMA-262 (the regex dialect of JSON Schema) does not.
DOUBTFUL_PARTS = {
    "year": ["0000", "0001", "1900", "2000", "2024", "2100", "99999", "20x6"],
    "month": ["00", "13", "02", "2"],
    "day": ["00", "29", "30", "31", "32"],
    "sep": ["_", "", "T"],
    "hour": ["24", "23", "7"],
    "minute": ["60", "59"],
    "second": ["60", "59"],
    "frac": [".", ",5", ".0000000001"],
    "offset": ["", "+24:00", "-23:59", "+7:00", "+0700", "UTC", "Zz"],
}


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    parts = {
        "year": f"{draw(st.integers(1, 9999)):04d}",
        "month": f"{draw(st.integers(1, 12)):02d}",
        "day": f"{draw(st.integers(1, 28)):02d}",
        "sep": draw(st.sampled_from("Tt ")),
        "hour": f"{draw(st.integers(0, 23)):02d}",
        "minute": f"{draw(st.integers(0, 59)):02d}",
        "second": f"{draw(st.integers(0, 59)):02d}",
        "frac": draw(st.sampled_from(["", ".5", ".123", ".123456789"])),
        "offset": draw(st.sampled_from(["Z", "z", "+07:00", "-00:00", "-12:30"])),
    }
    if draw(chance(2)):
        part = draw(st.sampled_from(sorted(DOUBTFUL_PARTS)))
        parts[part] = draw(st.sampled_from(DOUBTFUL_PARTS[part]))
    date, time = "{year}-{month}-{day}".format(**parts), "{hour}:{minute}:{second}{frac}{offset}".format(**parts)
    return f"{date}{parts['sep']}{time}"


@st.composite
def object_payloads(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind_id = draw(st.sampled_from(KINDS))
    kind = REGISTRY.kinds[kind_id]
    document: dict[str, Any] = {}
    if not draw(chance(16)):
        document["ts"] = mostly(
            draw,
            st.one_of(rfc3339(), rfc3339(), st.integers(-(10**15), 10**15), st.floats(-1e15, 1e15)),
            st.one_of(st.integers(-(10**16), 10**16), st.sampled_from([10**15 + 1, 1e15 + 0.5, "", None, True, [1]])),
        )
    if not draw(chance(16)):
        required = [m.name for m in kind.metrics if m.required]
        names = [m.name for m in kind.metrics]
        others = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        keys = list(dict.fromkeys(required + others))
        if draw(chance(8)):  # a required metric left out, or a name of no metric added
            keys = keys[1:] if required else [*keys, draw(st.sampled_from(["PM25", "", "x", "temperature", "level"]))]
        document["values"] = {k: value_of(draw, kind.metric(k)) if kind.metric(k) else 1 for k in keys}
        if draw(chance(16)):
            document["values"] = draw(st.sampled_from([{}, [], None, 5]))
    if draw(st.booleans()):
        document["seq"] = mostly(draw, st.integers(0, 10**12) | st.none(), st.sampled_from([-1, 1.5, "1", True]))
    if draw(chance(4)):
        # Another valid sensor id would be a topic-relative rule (SCHEMA_LIMITS): not drawn.
        document["sensor_id"] = mostly(draw, st.sampled_from([SENSORS[kind_id].id, None]),
                                       st.sampled_from(["PKT-AQ-001", "a", 7, ""]), odds=3)  # fmt: skip
    if draw(st.booleans()):
        document["extra"] = draw(st.sampled_from([1, "x", None]))
    return kind_id, document


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(object_payloads())
def test_object_schema_and_decoder_agree(case: tuple[str, dict[str, Any]]) -> None:
    kind, document = case
    assert_agree(kind, "object", document)


BOUNDARY_TIMES = [
    *(f"2026-11-25T{t}Z" for t in ("23:59:59", "24:00:00", "00:60:00", "00:00:60", "7:00:00")),
    *(
        f"{d}T00:00:00Z"
        for d in (
            "2024-02-29",
            "2000-02-29",
            "1900-02-29",
            "2100-02-29",
            "2026-02-29",
            "2026-04-31",
            "2026-12-31",
            "2026-13-01",
            "2026-00-10",
            "0000-01-01",
            "0001-01-01",
            "9999-12-31",
        )
    ),
    *(f"2026-11-25T00:00:00{o}" for o in ("+23:59", "+24:00", "-23:59", "-24:00", "+07:00", "+0700", "", "Z", "z")),
    *("2026-11-25" + rest for rest in ("t00:00:00Z", " 00:00:00Z", "_00:00:00Z", "T00:00:00.Z", "T00:00:00,5Z")),
    "2026-11-25T00:00:00.1234567890Z",
    -(10**15),
    10**15,
    -(10**15) - 1,
    10**15 + 1,
    1e15 + 0.5,
    0,
    0.5,
]


@pytest.mark.parametrize("ts", BOUNDARY_TIMES)
def test_object_schema_and_decoder_agree_on_time_boundaries(ts: Any) -> None:
    assert_agree("air_quality", "object", {"ts": ts, "values": {"pm25": 1}})


ABSOLUTE_S = [1_795_591_800, 1_795_591_800.25, -500_000_000]
TIME_EDGES = [2**28, 2**28 - 1, -(2**28), 10**12, 10**12 + 1, -(10**12) - 1, 0, 1000.5, "1795591800", True]


@st.composite
def senml_payloads(draw: st.DrawFn) -> tuple[str, list[Any]]:
    """Packs whose outcome never depends on SenML resolution across records (SCHEMA_LIMITS)."""
    kind_id = draw(st.sampled_from(KINDS))
    kind: Kind = REGISTRY.kinds[kind_id]
    sensor = SENSORS[kind_id].id
    metrics = [m.name for m in kind.metrics]
    required = [m.name for m in kind.metrics if m.required]
    units = {m.name: m.unit for m in kind.metrics}
    base: dict[str, Any] = {}
    bn = mostly(draw, st.sampled_from([None, "", f"{sensor}:", f"urn:dev:{sensor}:", f"{sensor}/", ":"]),
                st.sampled_from(["BAD:", "a:b/", "x"]), odds=8)  # fmt: skip
    if bn is not None:
        base["bn"] = bn
    if draw(chance(4)):
        base["bu"] = mostly(draw, st.sampled_from(sorted(set(units.values()))), st.sampled_from(OTHER_UNITS), odds=3)

    def name(metric: str) -> str:
        if bn:  # a base name is a prefix and n the metric (other splits: SCHEMA_LIMITS)
            return metric
        good = [metric, f"{sensor}:{metric}", f"urn:dev:{sensor}:{metric}", f"{sensor}/{metric}", f"/{metric}"]
        return str(mostly(draw, st.sampled_from(good), st.sampled_from([f"x:y/{metric}", metric.upper(), ""]), odds=12))

    def record(metric: str) -> dict[str, Any]:
        out: dict[str, Any] = {"n": name(metric)}
        if not draw(chance(16)):
            out["v"] = value_of(draw, kind.metric(metric))
        elif draw(st.booleans()):
            out["vs"] = "12"
        if draw(st.booleans()):
            out["u"] = mostly(draw, st.just(units[metric]), st.sampled_from(OTHER_UNITS), odds=6)
        return out

    if draw(st.booleans()):  # one instant: every record at bt
        chosen = draw(st.lists(st.sampled_from(metrics), min_size=1, max_size=len(metrics), unique=True))
        if not draw(chance(4)):
            chosen = list(dict.fromkeys(required + chosen))
        records = [record(m) for m in chosen]
        if not draw(chance(16)):
            base["bt"] = mostly(draw, st.sampled_from(ABSOLUTE_S) | st.floats(2**28, 1e12),
                                st.sampled_from(TIME_EDGES) | st.floats(-1e13, 1e13), odds=4)  # fmt: skip
    else:  # several instants, each complete and without repeats
        instants = draw(st.lists(st.sampled_from([-120, -60, 0, 30]), min_size=1, max_size=3, unique=True))
        with_bt = draw(st.booleans())
        records = []
        for offset in instants:
            extra = draw(st.lists(st.sampled_from(metrics), min_size=1, max_size=len(metrics), unique=True))
            for metric in dict.fromkeys(required + extra):
                item = record(metric)
                item["t"] = offset if with_bt else ABSOLUTE_S[0] + offset
                records.append(item)
        if with_bt:
            base["bt"] = mostly(
                draw, st.sampled_from(ABSOLUTE_S), st.sampled_from([1000, 2**28 - 10**7, 2 * 10**12, "x"])
            )
        elif draw(chance(6)):  # a relative or unusable t somewhere
            records[draw(st.integers(0, len(records) - 1))]["t"] = draw(st.sampled_from([10, -60, 2e12, "0", None]))
    pack: list[Any] = [{**base, **records[0]}, *records[1:]]
    if draw(chance(16)):
        pack.append(draw(st.sampled_from([1, "x", None, []])))
    if draw(chance(16)):
        del pack[0]["n"]
    if draw(chance(32)):
        pack = []
    return kind_id, pack


@pytest.mark.parametrize("bt", TIME_EDGES)
def test_senml_schema_and_decoder_agree_on_time_boundaries(bt: Any) -> None:
    assert_agree("air_quality", "senml", [{"bt": bt, "n": "pm25", "v": 1}])
    assert_agree("air_quality", "senml", [{"n": "pm25", "t": bt, "v": 1}])


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(senml_payloads())
def test_senml_schema_and_decoder_agree(case: tuple[str, list[Any]]) -> None:
    kind, pack = case
    assert_agree(kind, "senml", pack)


@pytest.mark.parametrize(
    ("why", "form", "document"),
    [
        ("clock", "object", {"ts": 0, "values": {"pm25": 1}}),
        ("topic", "object", {"ts": 1_795_591_800_000, "values": {"pm25": 1}, "sensor_id": "pkt-aq-002"}),
        ("integer fraction", "object", {"ts": 1_795_591_800_000, "values": {"pm25": 1}, "seq": 1.0}),
        ("senml sums", "senml", [{"bt": 1_795_591_800, "bv": 999, "n": "pm25", "v": 999}]),
        ("senml repeats", "senml", [{"bt": 1_795_591_800, "n": "pm25", "v": 1}, {"n": "pm25", "v": 2}]),
    ],
)
def test_the_documented_limits_are_real(why: str, form: str, document: Any) -> None:
    """Each exclusion of SCHEMA_LIMITS is a case where the schema accepts what ingest refuses."""
    kind = REGISTRY.kinds["air_quality"]
    schema = object_schema(kind) if form == "object" else senml_schema(kind)
    assert jsonschema.Draft202012Validator(schema).is_valid(document)
    payload = json.dumps(document).encode()
    assert not isinstance(Contract(REGISTRY).decode(SENSORS["air_quality"].topic, payload, 1_795_591_802_000), Accepted)
    assert SCHEMA_LIMITS


@pytest.mark.parametrize(
    ("form", "document"),
    [
        ("senml", [{"bt": 1_795_591_800, "n": "pm25", "u": None, "v": 1}]),
        ("senml", [{"bn": 7, "bt": 1_795_591_800, "n": "pm25", "v": 1}]),
    ],
)
def test_the_documented_leniencies_are_real(form: str, document: Any) -> None:
    """Each leniency of SCHEMA_LIMITS is a case where ingest accepts what the schema refuses."""
    kind = REGISTRY.kinds["air_quality"]
    schema = object_schema(kind) if form == "object" else senml_schema(kind)
    assert not jsonschema.Draft202012Validator(schema).is_valid(document)
    payload = json.dumps(document).encode()
    assert isinstance(Contract(REGISTRY).decode(SENSORS["air_quality"].topic, payload, 1_795_591_802_000), Accepted)


# -- the guide ----------------------------------------------------------------------------------


def test_the_guide_is_up_to_date_with_the_registry() -> None:
    text = GUIDE.read_text()
    assert render_doc(text, REGISTRY) == text, "run: smartcity contract docs docs/vendors.md"


def test_every_example_of_the_guide_gets_its_stated_outcome_from_contract_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    found = guide_examples(GUIDE.read_text())
    # Both forms for every kind, and every reject code a vendor can meet but the 16 KiB one and `conflict`
    # (it depends on what ingest stored before; `contract check` judges one message alone).
    accepted = [e for e in found if e.markers["expect"] == ACCEPTED]
    assert len(accepted) >= 2 * len(REGISTRY.kinds)
    codes = {c.value for c in RejectCode} - {"payload_too_large", "conflict"}
    assert {e.markers["expect"] for e in found} == {ACCEPTED} | codes
    for example in found:
        markers = example.markers
        args = ["contract", "check", "--topic", markers["topic"], "--payload", "-", "--received-at"]
        code, out, err = run([*args, markers["received-at"]], capsys, stdin=example.payload.encode())
        if markers["expect"] == ACCEPTED:
            assert code == 0, (markers, out, err)
            readings = [json.loads(line) for line in out.splitlines()]
            assert readings and all(r["sensor_id"] == markers["topic"].rsplit("/", 1)[1] for r in readings)
            assert example.reject_message is None
        else:
            assert code == 1, (markers, out, err)
            assert out.startswith(f"{markers['expect']}: "), out
            code, out, err = run([*args, markers["received-at"], "--json"], capsys, stdin=example.payload.encode())
            assert json.loads(out) == example.reject_message, "the guide shows another reject message"


def test_accepted_examples_validate_against_their_json_schema() -> None:
    for example in examples(REGISTRY):
        if example.expect != ACCEPTED:
            continue
        kind = REGISTRY.kinds[example.topic.split("/")[3]]
        document = json.loads(example.payload)
        schema = senml_schema(kind) if isinstance(document, list) else object_schema(kind)
        assert jsonschema.Draft202012Validator(schema).is_valid(document), example


# -- one registry edit changes everything together ----------------------------------------------


@pytest.fixture
def narrow_registry(tmp_path: Path) -> Path:
    """A copy of the built-in registry with the PM2.5 range cut from 0..1000 to 0..600 ug/m3."""
    folder = tmp_path / "registry"
    shutil.copytree(BUILTIN_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    kinds = folder / "kinds.yaml"
    text = kinds.read_text()
    assert "{name: pm25, unit: ug/m3, min: 0, max: 1000," in text
    kinds.write_text(
        text.replace("name: pm25, unit: ug/m3, min: 0, max: 1000,", "name: pm25, unit: ug/m3, min: 0, max: 600,")
    )
    return folder


def test_a_metric_range_edit_changes_schemas_asyncapi_guide_and_decoder(
    narrow_registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    narrow: Registry = load_registry([narrow_registry])
    kind = narrow.kinds["air_quality"]
    assert object_schema(kind)["properties"]["values"]["properties"]["pm25"]["maximum"] == 600
    senml_pm25 = [
        r["then"]["properties"]["v"] for r in senml_schema(kind)["items"]["allOf"] if "pm25" in json.dumps(r["if"])
    ]
    assert senml_pm25 == [{"minimum": 0, "maximum": 600}]

    before, after = asyncapi_document(REGISTRY), asyncapi_document(narrow)
    assert before["info"]["version"] != after["info"]["version"]
    schema = after["components"]["messages"]["air_quality.object"]["payload"]["schema"]
    assert schema["properties"]["values"]["properties"]["pm25"]["maximum"] == 600

    guide = tmp_path / "vendors.md"
    shutil.copy(GUIDE, guide)
    code, _, err = run(["contract", "docs", str(guide), "--check", "--registry", str(narrow_registry)], capsys)
    assert code == 1 and "out of date" in err
    assert run(["contract", "docs", str(guide), "--registry", str(narrow_registry)], capsys)[0] == 0
    assert "| `pm25` | `ug/m3` | 0 | 600 |" in guide.read_text()
    assert "| `pm25` | `ug/m3` | 0 | 1000 |" in GUIDE.read_text()

    payload = b'{"ts": "2026-11-25T14:30:00+07:00", "values": {"pm25": 700}}'
    args = ["contract", "check", "--topic", "smartcity/v1/phuket/air_quality/pkt-aq-001", "--payload", "-",
            "--received-at", "2026-11-25T07:30:02Z"]  # fmt: skip
    assert run(args, capsys, stdin=payload)[0] == 0
    code, out, _ = run([*args, "--registry", str(narrow_registry)], capsys, stdin=payload)
    assert (code, out) == (1, "out_of_range: pm25: 700 ug/m3 is outside 0..600\n")


# -- the commands -------------------------------------------------------------------------------


def test_build_writes_asyncapi_and_schemas_and_drops_stale_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "contract"
    (out / "schemas").mkdir(parents=True)
    (out / "schemas" / "retired_kind.object.schema.json").write_text("{}")
    code, stdout, _ = run(["contract", "build", "--out", str(out), "--host", "mqtt.phuket.example"], capsys)
    assert code == 0 and f"{len(schema_files(REGISTRY))} JSON Schemas" in stdout
    names = sorted(p.name for p in (out / "schemas").iterdir())
    assert names == sorted(schema_files(REGISTRY))
    document = yaml.safe_load((out / "asyncapi.yaml").read_text())
    assert document["servers"]["production"]["variables"]["host"]["default"] == "mqtt.phuket.example"
    assert json.loads((out / "schemas" / "air_quality.senml.schema.json").read_text()) == senml_schema(
        REGISTRY.kinds["air_quality"]
    )


def test_user_errors_exit_1_and_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["contract", "build", "--out", str(tmp_path), "--vendor", "acme"], capsys)
    assert code == 1 and err.startswith("smartcity: error: --vendor: unknown vendor 'acme'")
    assert run(["contract", "check", "--payload", "-"], capsys, stdin=b"{}")[0] == 2
    code, _, err = run(["contract", "check", "--topic", "t", "--payload", "-", "--received-at", "noon"], capsys, b"{}")
    assert code == 2 and "--received-at" in err
    assert run(["contract", "check", "--topic", "t", "--payload", str(tmp_path / "missing.json")], capsys)[0] == 2
    plain = tmp_path / "plain.md"
    plain.write_text("# no generated sections\n")
    code, _, err = run(["contract", "docs", str(plain)], capsys)
    assert code == 1 and f"{plain}: no generated section" in err


def test_check_reads_a_file_and_prints_the_reject_message_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "reading.json"
    payload.write_text('{"ts": 1795591800, "values": {"level": 1.2}}')
    topic = "smartcity/v1/phuket/water_level/pkt-wl-001"
    code, out, err = run(["contract", "check", "--topic", topic, "--payload", str(payload), "--json"], capsys)
    assert code == 1
    message = json.loads(out)
    assert message["code"] == "ts_too_old" and "epoch seconds" in message["detail"]
    assert message["topic"] == topic and set(message) == {"code", "detail", "topic", "received_at", "payload_b64"}
    assert "smartcity/dlq/v1/phuket/water_level/pkt-wl-001" in err
