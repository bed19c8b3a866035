"""Fixtures of the system suite: the seed of its random fault points and the report of its figures."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.report import REPORT_VARIABLE, Report

# Random fault points come from this seed (shown in pytest's header); setting it replays the same points.
SEED_VARIABLE = "SMARTCITY_RELIABILITY_SEED"
SEED = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(1, 10**6))
_report = Report(SEED)
_failed: list[str] = []


def pytest_report_header() -> str:
    return f"system suite: {SEED_VARIABLE}={SEED}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and "tests/system/" in report.nodeid:
        _failed.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _report.rows and not _failed:
        return
    terminalreporter.write_sep("-", f"system suite figures ({SEED_VARIABLE}={SEED})")
    terminalreporter.write_line(_report.table())
    target = os.environ.get(REPORT_VARIABLE)
    if target and not _failed:
        _report.write(Path(target))
        terminalreporter.write_line(f"wrote the table of {target}")
    elif target:
        terminalreporter.write_line(f"{target} not updated: {len(_failed)} system tests failed")


@pytest.fixture(scope="session")
def seed() -> int:
    return SEED


@pytest.fixture(scope="session")
def reliability() -> Iterator[Report]:
    """Collects one row per scenario for the table of docs/reliability.md."""
    yield _report
