"""The raw writer of `smartcity ingest` (role `all`) in a child process, so consumer and writer each get a core.

In one process the MQTT loop, the group committer and the raw writer share
one GIL and wait on each other's durable writes (docs/benchmarks.md). So the
`all` process keeps the MQTT session and the spool appends, and runs the
existing `smartcity ingest --role write` as a child that writes only its
stream (`--parent-pid`):

    supervisor = WriterSupervisor(command, env)   # in the parent
    supervisor.start()                            # starts the child; restarts it with back-off if it dies
    supervisor.stop(timeout_s)                    # asks it to drain, waits, kills it at the deadline

    watch = ParentWatch(parent_pid, stop)         # in the child: `stop` is set when the parent asks or dies
    watch.start()

The parent asks the child to stop by writing the seconds it may take on the
child's stdin and closing it, not with a signal: a service manager or a
terminal signals the whole process group at once, and the writer must keep
writing until the consumer's last commit is on disk. A child whose parent is
gone stops by itself, so it never outlives it: PR_SET_PDEATHSIG(SIGTERM) on
Linux, end of file on stdin, and a poll of getppid() as the fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

logger = logging.getLogger(__name__)

# Restart back-off of a child that died: doubles from the minimum up to the cap. A child that ran at
# least the cap before it died starts the back-off again from the minimum.
RESTART_MIN_DELAY_S = 0.5
RESTART_MAX_DELAY_S = 30.0
# How often the child looks at its parent pid and its stdin (the fallback to PR_SET_PDEATHSIG).
PARENT_POLL_S = 0.5
# Kept back by the parent from the child's stop: killing a late child, then reaping it.
KILL_MARGIN_S = 0.3
PR_SET_PDEATHSIG = 1
# The log format of the `smartcity` command (deploy/cli.py), whose stderr the child shares.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def writer_command(client_id: str, home: os.PathLike[str] | str, *, quiet: bool) -> list[str]:
    """`smartcity ingest --role write` for the stream of `client_id`, as the child of this process."""
    return [
        sys.executable, "-m", __name__, str(logging.getLogger().getEffectiveLevel()), "--role", "write",
        "--client-id", client_id, "--home", os.fspath(home), "--parent-pid", str(os.getpid()),
        *(["--quiet"] if quiet else []),
    ]  # fmt: skip


class WriterSupervisor:
    """Runs `command` as a child process from a thread of its own, restarting it with back-off until `stop()`.

    The thread that starts a child must live as long as the child: PR_SET_PDEATHSIG fires when the
    thread that forked it ends, not the process.
    """

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # no child is started once stop() began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-writer-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        delay = RESTART_MIN_DELAY_S
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._proc = proc = subprocess.Popen(self.command, env=self.env, stdin=subprocess.PIPE)
                except OSError as err:
                    logger.error("could not start the raw writer process: %s; retrying in %.1f s", err, delay)
                    proc = None
            started = time.monotonic()
            if proc is not None:
                logger.info("raw writer process %d started", proc.pid)
                code = proc.wait()
                if self._stop.is_set():
                    return
                if time.monotonic() - started >= RESTART_MAX_DELAY_S:
                    delay = RESTART_MIN_DELAY_S
                self.restarts += 1
                logger.error(
                    "the raw writer process %d exited (%s); restarting it in %.1f s (the spool keeps the readings)",
                    proc.pid, _describe(code), delay,
                )  # fmt: skip
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, RESTART_MAX_DELAY_S)

    def stop(self, timeout_s: float) -> None:
        """Ask the child to write what the spool holds within `timeout_s`, wait for it, kill it if late."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _ask_to_stop(proc.stdin, max(0.1, timeout_s - KILL_MARGIN_S))
            try:
                proc.wait(max(0.1, deadline - time.monotonic() - KILL_MARGIN_S))
            except subprocess.TimeoutExpired:
                logger.warning("raw writer process %d did not stop in time; killed, the rest is written next start",
                               proc.pid)  # fmt: skip
                proc.kill()
                proc.wait()
        self._thread.join(max(0.1, deadline - time.monotonic()))


def _ask_to_stop(stdin: IO[bytes] | None, budget_s: float) -> None:
    if stdin is None:
        return
    with contextlib.suppress(OSError):  # BrokenPipeError: it is stopping already
        stdin.write(f"{budget_s:.3f}\n".encode())
        stdin.flush()
    with contextlib.suppress(OSError):
        stdin.close()


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


# -- in the child ---------------------------------------------------------------------------------


class ParentWatch:
    """In the writer process: sets `stop` when the parent asks (stdin: seconds to take, then end of file)
    or is gone. `budget_s` is then the time the parent allowed, or None (use shutdown_timeout_s).

    SIGTERM and SIGINT stop the child only once its parent is gone: while it lives, they are the
    group's signal, and the parent asks the child in its turn, after its last commit.
    """

    def __init__(self, parent_pid: int, stop: threading.Event) -> None:
        self.parent_pid = parent_pid
        self.stop = stop
        self.budget_s: float | None = None
        self._once = threading.Lock()  # the signal handler and the watch thread may both see it gone
        self._thread = threading.Thread(target=self._run, name="ingest-parent-watch", daemon=True)

    def start(self) -> None:
        set_parent_death_signal(signal.SIGTERM)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        if not self.parent_alive():  # it died before the death signal was set
            self._gone()
        self._thread.start()

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.parent_alive():
            self._gone()

    def _gone(self) -> None:
        if self._once.acquire(blocking=False):  # never released: said once (never blocks a signal handler)
            logger.warning("ingest process %d is gone; the raw writer writes what it can and stops", self.parent_pid)
            self.stop.set()

    def _run(self) -> None:
        fd = sys.stdin.fileno()
        received = b""
        while not self.stop.is_set():
            if not self.parent_alive():
                self._gone()
                return
            readable, _, _ = select.select([fd], [], [], PARENT_POLL_S)
            if not readable:
                continue
            chunk = os.read(fd, 256)
            if chunk:
                received += chunk
                continue
            # End of file: the parent asked (with a budget), or died (and its death signal is on the way).
            with contextlib.suppress(ValueError, IndexError):
                self.budget_s = float(received.split()[-1])
            if self.budget_s is None:
                self._gone()
            else:
                logger.info("stopping the raw writer: ingest process %d asked", self.parent_pid)
                self.stop.set()
            return


def set_parent_death_signal(signum: int) -> bool:
    """PR_SET_PDEATHSIG: the kernel sends `signum` to this process when its parent's thread ends (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:
        logger.warning("PR_SET_PDEATHSIG failed; the raw writer watches its parent by polling instead")
    return ok


def main(argv: Sequence[str]) -> int:
    """The child's entry: `python -m ingest.writerproc LOG_LEVEL [smartcity ingest options]`.

    It skips the `smartcity` command group, whose imports (every subcommand's) would double the
    child's start-up time and memory; smartcity.toml is in the environment the parent passed on.
    """
    level, *args = argv
    logging.basicConfig(level=int(level), format=LOG_FORMAT, stream=sys.stderr)
    from ingest.cli import ingest_command
    from sensors.errors import SmartcityError

    try:
        ingest_command.main(args=args, prog_name="smartcity ingest", standalone_mode=False)
    except SmartcityError as err:
        print(f"smartcity ingest: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
