"""Health: ping plus a harmless write-and-read self-test, as `smartcity stack status` shows it."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.health import influx_health
from storage.health import check
from storage.query import QueryClient, ident
from storage.schema import SELFTEST_MEASUREMENT
from storage.settings import InfluxSettings
from tests.servers import StackHandle

pytestmark = pytest.mark.integration


def test_check_writes_only_its_own_measurement(influx: InfluxSettings) -> None:
    for _ in range(3):
        report = check(influx)
        assert report.ok, report.detail
    assert report.version.startswith("1.6") and report.selftest_s is not None
    with QueryClient(influx) as client:
        measurements = [row[0] for s in client.query("SHOW MEASUREMENTS") for row in s.values]
        [series] = client.query("SELECT count(nonce) FROM {m}", {"m": ident("raw", SELFTEST_MEASUREMENT)})
    assert measurements == [SELFTEST_MEASUREMENT]
    assert series.values[0][1] == 3


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"url": "http://127.0.0.1:9"}, "unreachable"),
        ({"password": "wrong"}, "self-test failed"),
        ({"db": "missing_db"}, "database not found"),
    ],
)
def test_check_reports_what_is_wrong(influx: InfluxSettings, change: dict[str, str], detail: str) -> None:
    report = check(dataclasses.replace(influx, **change))  # type: ignore[arg-type]
    assert not report.ok and detail in report.detail


def test_stack_status_influx_check_uses_the_self_test(stack: StackHandle) -> None:
    ok, detail = influx_health(stack.influx_url, "admin", stack.influx_admin_password)
    assert ok and "self-test" in detail, detail
    ok, detail = influx_health(stack.influx_url, "admin", "wrong")
    assert not ok and "401" in detail
