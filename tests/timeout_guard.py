"""A test cannot pass after its own timeout.

pytest-timeout raises from a SIGALRM handler. If the signal lands while Python runs a gc
callback (hypothesis installs one), the exception is printed as "Exception ignored in gc
callback" and lost, and the test goes on and may pass: `test_simulated_day_it.py` did. This
guard judges by the clock instead: a phase that ends past the item's timeout, counted from the
start of its setup as pytest-timeout counts, fails.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

_STARTED = pytest.StashKey[float]()
_FLAGGED = pytest.StashKey[bool]()


def item_timeout_s(item: pytest.Item) -> float:
    """The item's timeout as pytest-timeout reads it: the `timeout` marker, else --timeout, else the ini value."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
        if value is not None:
            return float(value)
    option = item.config.getoption("timeout", default=None)
    if option is not None:
        return float(option)
    return float(item.config.getini("timeout") or 0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    if call.when == "setup":
        item.stash[_STARTED] = call.start
    report = yield
    limit = item_timeout_s(item)
    elapsed = call.stop - item.stash.get(_STARTED, call.start)
    if limit > 0 and report.passed and elapsed > limit and not item.stash.get(_FLAGGED, False):
        item.stash[_FLAGGED] = True  # one failure per test, not one per phase
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: {call.when} ended {elapsed:.1f} s after its setup began, past its {limit:g} s "
            "timeout (the timeout's exception was swallowed, e.g. inside a gc callback)"
        )
    return report
