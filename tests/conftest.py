"""Real servers for the tests: Mosquitto and InfluxDB on free ports in a temp dir.

The fixtures start them through `deploy.stack.Stack`, the same code path as
`smartcity stack up`, so every test runs against the configuration users get.
A server that cannot start fails the tests that need it loudly; nothing is
skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import StackHandle, let_broker_through, start_stack


@pytest.fixture(autouse=True)
def _broker_passes_through_tmp_path(request: pytest.FixtureRequest) -> None:
    """As root, a stack's broker runs as user `mosquitto`: let it through the test's private temp folder."""
    if "tmp_path" in request.fixturenames:
        let_broker_through(request.getfixturevalue("tmp_path"))


# tests.timeout_guard: no test can pass after its own timeout; pytester runs the guard's own test.
pytest_plugins = ["tests.timeout_guard", "pytester"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """One Mosquitto + InfluxDB for the whole session, shared by the tests that only read and write."""
    handle = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield handle
    finally:
        handle.down()


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """A stack of the module's own, for checks that need a database no other module writes to: the
    session stack's content depends on which modules ran before on the same worker (`make test` runs two)."""
    handle = start_stack(tmp_path_factory.mktemp("own-stack"))
    try:
        yield handle
    finally:
        handle.down()


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[StackHandle]:
    """A stack of the test's own, for tests that stop, kill or restart servers."""
    handle = start_stack(tmp_path / "stack")
    try:
        yield handle
    finally:
        handle.down()


@pytest.fixture
def cli_env(stack: StackHandle, tmp_path: Path) -> dict[str, str]:
    """Environment for a `smartcity` subprocess pointed at the session stack, with its own home."""
    env = dict(os.environ)
    env.update(stack.env(home=tmp_path / "home"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env
