"""The supervisor of the raw writer child, with real child processes: back-off, the stop request, a late child."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

import pytest

from ingest import writerproc
from ingest.writerproc import WriterSupervisor
from tests.ingest.helpers import wait_until


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_child_that_dies_is_restarted_with_a_doubling_capped_delay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(writerproc, "RESTART_MIN_DELAY_S", 0.1)
    monkeypatch.setattr(writerproc, "RESTART_MAX_DELAY_S", 0.4)
    caplog.set_level(logging.INFO, logger="ingest.writerproc")
    false = shutil.which("false")
    assert false is not None
    supervisor = WriterSupervisor([false])  # dies at once, far within the 0.4 s that resets the back-off
    supervisor.start()
    wait_until(lambda: supervisor.restarts >= 5, 30, "five restarts", interval_s=0.05)
    supervisor.stop(2.0)
    assert "exited (exit code 1); restarting it in 0.1 s" in caplog.text
    delays = [
        float(r.getMessage().rsplit(" in ", 1)[1].split(" s")[0]) for r in caplog.records if "exited" in r.message
    ]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
    count = supervisor.restarts
    time.sleep(0.6)
    assert supervisor.restarts == count, "restarted after stop()"


def test_stop_hands_the_child_its_budget_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "budget"
    code = f"import sys, pathlib; pathlib.Path({str(out)!r}).write_text(sys.stdin.read())"
    supervisor = WriterSupervisor(python(f"print('started', flush=True); {code}"))
    supervisor.start()
    wait_until(lambda: supervisor.pid is not None, 10, "the child")
    time.sleep(0.3)
    supervisor.stop(2.0)
    budget = float(out.read_text())
    assert 1.0 < budget <= 2.0 - writerproc.KILL_MARGIN_S
    assert supervisor.restarts == 0


def test_a_child_that_does_not_stop_in_time_is_killed(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = WriterSupervisor(
        python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    )
    supervisor.start()
    wait_until(lambda: supervisor.pid is not None, 10, "the child")
    pid = supervisor.pid
    started = time.monotonic()
    supervisor.stop(1.0)
    assert time.monotonic() - started < 1.5
    assert f"raw writer process {pid} did not stop in time; killed" in caplog.text
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def test_notify_reaches_the_child_through_its_wake_pipe_and_never_blocks(tmp_path: Path) -> None:
    out = tmp_path / "woken"
    code = f"import os, sys, pathlib; pathlib.Path({str(out)!r}).write_bytes(os.read(int(sys.argv[2]), 64)); input()"
    supervisor = WriterSupervisor(python(code), wake_option="--wake-fd")
    supervisor.start()
    wait_until(lambda: supervisor.pid is not None, 10, "the child")
    supervisor.notify()
    wait_until(lambda: out.exists() and out.stat().st_size > 0, 10, "the child to read its wake-up")
    assert out.read_bytes().startswith(b"\0")
    started = time.monotonic()
    for _ in range(200_000):  # far more than a pipe holds: the rest is dropped, not waited for
        supervisor.notify()
    assert time.monotonic() - started < 5
    supervisor.stop(2.0)
    assert supervisor.restarts == 0
    supervisor.notify()  # after stop: a no-op
