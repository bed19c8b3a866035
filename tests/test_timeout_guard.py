"""The guard in tests/timeout_guard.py fails a test whose timeout exception was swallowed."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SWALLOWS_ITS_TIMEOUT = """
import time
import pytest

@pytest.mark.timeout(1)
def test_swallows_its_timeout():
    # What a gc callback does to pytest-timeout's exception: it is caught and dropped.
    try:
        time.sleep(3)
    except BaseException:
        pass
    time.sleep(0.5)  # and goes on: its call ends clearly past the timeout, not at the very instant

@pytest.mark.timeout(5)
def test_within_its_timeout():
    time.sleep(0.1)
"""


def test_a_test_cannot_pass_after_its_timeout(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(SWALLOWS_ITS_TIMEOUT)
    result = pytester.runpytest_subprocess("-p", "tests.timeout_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_swallows_its_timeout*past its 1 s timeout*"])


def test_without_the_guard_the_swallowed_timeout_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure the guard exists for, shown on plain pytest-timeout (so the guard's test can fail)."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(SWALLOWS_ITS_TIMEOUT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
