"""Fixtures of the storage tests: a fresh, bootstrapped database per test in the session InfluxDB."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from storage.bootstrap import bootstrap
from storage.settings import InfluxSettings
from tests.servers import StackHandle
from tests.storage.v2_compat_proxy import V2CompatProxy

_counter = itertools.count()


def admin_settings(stack: StackHandle, db: str, **overrides: object) -> InfluxSettings:
    """1.x settings for `db` on `stack`, as `SMARTCITY_INFLUX_URL` with credentials gives them."""
    env = {
        "SMARTCITY_INFLUX_URL": f"http://admin:{stack.influx_admin_password}@127.0.0.1:{stack.influx_port}",
        "SMARTCITY_INFLUX_DB": db,
    }
    return InfluxSettings.from_env(env, **overrides)


def fresh_db(stack: StackHandle, **overrides: object) -> InfluxSettings:
    """A new database with the raw and rollup retention policies."""
    settings = admin_settings(stack, f"t{os.getpid()}_{next(_counter)}", **overrides)
    bootstrap(settings)
    return settings


@pytest.fixture
def influx(stack: StackHandle) -> InfluxSettings:
    """1.x settings for a fresh, bootstrapped database of this test (retries kept short)."""
    return fresh_db(stack, retry_initial_delay_s=0.05, retry_max_total_s=10.0)


@pytest.fixture(scope="session")
def v2_proxy(stack: StackHandle) -> Iterator[V2CompatProxy]:
    with V2CompatProxy(stack.influx_port) as proxy:
        yield proxy


@pytest.fixture
def influx_v2(stack: StackHandle, v2_proxy: V2CompatProxy, influx: InfluxSettings) -> InfluxSettings:
    """2.x settings (token, org, bucket "{db}/{rp}") for the same database, through the 1.8-style adapter."""
    env = {
        "SMARTCITY_INFLUX_URL": v2_proxy.url,
        "SMARTCITY_INFLUX_TOKEN": f"admin:{stack.influx_admin_password}",
        "SMARTCITY_INFLUX_ORG": "smartcity",
        "SMARTCITY_INFLUX_DB": influx.db,
    }
    return InfluxSettings.from_env(env, retry_initial_delay_s=0.05, retry_max_total_s=10.0)
