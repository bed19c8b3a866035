"""Per-vendor self-metrics of `smartcity ingest`: what the Operations dashboard and the reject-ratio alert read."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from sensors.contract import RejectCode
from sensors.registry import default_registry
from storage.schema import INGEST_REJECTS_MEASUREMENT, INGEST_VENDORS_MEASUREMENT, UNKNOWN_VENDOR
from tests.ingest.helpers import IngestProcess, Publisher, influx_query, ingest_env, messages, wait_for_points
from tests.servers import StackHandle

pytestmark = pytest.mark.integration


def sums(stack: StackHandle, statement: str) -> dict[tuple[str, ...], list[int]]:
    """GROUP BY tags (in the order InfluxDB sorts them) -> the row's sums."""
    result = influx_query(stack, statement)["results"][0]
    return {tuple(s.get("tags", {}).values()): s["values"][0][1:] for s in result.get("series", [])}


def test_received_accepted_and_rejects_by_code_are_exact_per_vendor(stack: StackHandle, tmp_path: Path) -> None:
    registry = default_registry()
    good = messages(700, slot=6)
    now = int(time.time() * 1000)
    aq = registry.sensors["pkt-aq-001"]  # one vendor's air-quality sensor
    other = next(s for s in registry.sensors.values() if s.vendor != aq.vendor)

    def body(**document: object) -> bytes:
        return json.dumps(document).encode()

    bad: list[tuple[str, bytes, str, RejectCode]] = [
        *[(aq.topic, body(ts=now, values={"pm25": -3}), aq.vendor, RejectCode.OUT_OF_RANGE)] * 3,
        *[(aq.topic, b'{"ts": ', aq.vendor, RejectCode.INVALID_JSON)] * 2,
        (
            other.topic,
            body(values={registry.kinds[other.kind].metrics[0].name: 1}),
            other.vendor,
            RejectCode.MISSING_TS,
        ),
        # A registered sensor on another city's topic still counts for its vendor.
        (
            aq.topic.replace(f"/{aq.city}/", "/chiang-mai/"),
            body(ts=now, values={"pm25": 1}),
            aq.vendor,
            RejectCode.SENSOR_TOPIC_MISMATCH,
        ),
        *[
            (
                f"smartcity/v1/phuket/air_quality/pkt-aq-9{n:02d}",
                body(ts=now, values={"pm25": 1}),
                UNKNOWN_VENDOR,
                RejectCode.UNKNOWN_SENSOR,
            )
            for n in range(4)
        ],
        *[("smartcity/v1/phuket/air_quality", body(ts=now), UNKNOWN_VENDOR, RejectCode.BAD_TOPIC)] * 2,
    ]
    env = ingest_env(stack, tmp_path / "home", client_id="it-vendors")
    with IngestProcess(env, tmp_path / "ingest.log") as ingest:
        ingest.wait_log("subscribed to")
        publisher = Publisher(stack)
        publisher.publish([*good, *[(topic, payload) for topic, payload, _, _ in bad]])
        publisher.close()
        wait_for_points(stack, good, timeout_s=30)
        assert ingest.terminate() == 0  # the last report is written on the way out

    accepted = Counter(registry.sensors[m.sensor_id].vendor for m in good)
    rejects = Counter((vendor, code.value) for _, _, vendor, code in bad)
    rejected = Counter(vendor for _, _, vendor, _ in bad)
    vendors = accepted.keys() | rejected.keys()
    assert len(vendors) >= 5 and UNKNOWN_VENDOR in vendors
    where = "WHERE instance = 'it-vendors'"
    per_vendor = sums(
        stack,
        f'SELECT sum(received), sum(accepted), sum(rejected) FROM "raw"."{INGEST_VENDORS_MEASUREMENT}" '
        f'{where} GROUP BY "vendor"',
    )
    assert per_vendor == {(v,): [accepted[v] + rejected[v], accepted[v], rejected[v]] for v in sorted(vendors)}
    by_code = sums(
        stack, f'SELECT sum(rejected) FROM "raw"."{INGEST_REJECTS_MEASUREMENT}" {where} GROUP BY "code", "vendor"'
    )
    assert by_code == {(code, vendor): [n] for (vendor, code), n in rejects.items()}
    # The per-vendor figures add up to the process's own totals.
    totals = sums(stack, f'SELECT sum(received), sum(accepted), sum(rejected) FROM "raw"."ingest" {where}')
    assert totals == {(): [len(good) + len(bad), len(good), len(bad)]}
