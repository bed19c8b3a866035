"""SIGINT and SIGTERM handled in a thread, never inside Python's signal handler (`handled_signals`).

Python runs a signal handler in the main thread between two bytecodes, wherever that thread is.
A handler that sets a `threading.Event` can deadlock when the main thread is inside that event's
`wait()` holding the event's lock (CPython issue 126434 describes the same for multiprocessing):
the process would then ignore SIGTERM for good. Here the Python-level handler does nothing; the
C-level handler writes the signal's number to a pipe (`signal.set_wakeup_fd`), and a thread of
its own calls `on_signal`, where taking locks and logging are safe.

Not for a process that forks without exec while the block runs: the children would share the pipe
and have no thread reading it (`smartcity simulate --processes` keeps plain handlers for that).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_CLOSE = b"\0"  # no signal has number 0: tells the thread to end


@contextmanager
def handled_signals(
    on_signal: Callable[[int], None], signums: Sequence[signal.Signals] = STOP_SIGNALS
) -> Iterator[None]:
    """While the block runs, call `on_signal(signum)` in a thread for each of `signums` received.
    From the main thread only (as `signal.signal`); the previous handlers are restored after."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    wanted = {int(s) for s in signums}

    def watch() -> None:
        while True:
            for number in os.read(read_fd, 64):
                if number == _CLOSE[0]:
                    return
                if number in wanted:
                    on_signal(number)

    previous = {s: signal.getsignal(s) for s in signums}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    thread = threading.Thread(target=watch, name="signals", daemon=True)
    thread.start()
    try:
        for s in signums:
            signal.signal(s, _written_to_the_pipe)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        os.write(write_fd, _CLOSE)
        thread.join(5)
        os.close(write_fd)
        os.close(read_fd)


def _written_to_the_pipe(signum: int, frame: object) -> None:
    """The Python-level handler: nothing to do, the number is in the wake-up pipe (a handler must be set
    for Python to catch the signal at all)."""
