"""SIGTERM and SIGINT reach `on_signal` in a thread of its own, and the previous handlers come back."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, signal, threading
    from sensors.shutdown import handled_signals

    calls = []
    done = threading.Event()

    def on_signal(signum):
        calls.append((signum, threading.current_thread() is threading.main_thread()))
        done.set()

    before = signal.getsignal(signal.SIGTERM)
    with handled_signals(on_signal):
        for signum in (signal.SIGTERM, signal.SIGINT):
            done.clear()
            os.kill(os.getpid(), signum)
            assert done.wait(5), signum
    assert calls == [(signal.SIGTERM, False), (signal.SIGINT, False)], calls
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.set_wakeup_fd(-1) == -1  # none left behind
    print("ok")
    """
)


def test_signals_reach_a_thread_and_the_handlers_are_restored() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
