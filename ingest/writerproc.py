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
    with handled_signals(watch.on_signal):        # SIGTERM, SIGINT: handled in a thread (sensors/shutdown.py)
        watch.start()

After each group commit the parent writes a byte to a wake-up pipe
(`supervisor.notify()`), so the child's writer reads the spool at once instead
of at its next poll (`write_poll_interval_ms`, the fallback): the poll was
most of the time from a commit to InfluxDB.

The child imports only what writing needs (its entry is this module, not the
`smartcity` command group: no click, rich, registry, pydantic or MQTT client),
which keeps it at about a third of the parent's memory.

The parent asks the child to stop by writing the seconds it may take on the
child's stdin and closing it, not with a signal: a service manager or a
terminal signals the whole process group at once, and the writer must keep
writing until the consumer's last commit is on disk. A child whose parent is
gone stops by itself, so it never outlives it: PR_SET_PDEATHSIG(SIGTERM) on
Linux, end of file on stdin, and a poll of getppid() as the fallback.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
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


# The child's option that names its end of the wake-up pipe (added by the supervisor).
WAKE_FD_OPTION = "--wake-fd"


def writer_command(client_id: str, home: os.PathLike[str] | str, *, quiet: bool) -> list[str]:
    """The raw writer (`smartcity ingest --role write`) of the stream of `client_id`, as the child of this process."""
    return [
        sys.executable, "-m", __name__, str(logging.getLogger().getEffectiveLevel()),
        "--client-id", client_id, "--home", os.fspath(home), "--parent-pid", str(os.getpid()),
        *(["--quiet"] if quiet else []),
    ]  # fmt: skip


class WriterSupervisor:
    """Runs `command` as a child process from a thread of its own, restarting it with back-off until `stop()`.

    The thread that starts a child must live as long as the child: PR_SET_PDEATHSIG fires when the
    thread that forked it ends, not the process. With `wake_option`, every child gets the read end
    of a wake-up pipe as `wake_option FD`, and `notify()` writes to it.
    """

    def __init__(
        self, command: Sequence[str], env: Mapping[str, str] | None = None, *, wake_option: str | None = None
    ) -> None:
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self._wake_fds: tuple[int, ...] = ()
        if wake_option is not None:
            # The parent keeps the read end open too: a write never fails for want of a reader, and a
            # restarted child inherits the same pipe (a wake-up left in it costs one spurious read).
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)
            self._wake_fds = (read_fd, write_fd)
            self.command += [wake_option, str(read_fd)]
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

    def notify(self) -> None:
        """The spool has new records: wake the child's writer. Never blocks (the consumer's committer calls it)."""
        if self._wake_fds:
            # A full pipe already holds wake-ups; after stop() the fd is closed. Either way the poll is the fallback.
            with contextlib.suppress(OSError):
                os.write(self._wake_fds[1], b"\0")

    def _run(self) -> None:
        delay = RESTART_MIN_DELAY_S
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._proc = proc = subprocess.Popen(
                        self.command, env=self.env, stdin=subprocess.PIPE, pass_fds=self._wake_fds[:1]
                    )
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
        for fd in self._wake_fds:
            os.close(fd)
        self._wake_fds = ()


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
    group's signal, and the parent asks the child in its turn, after its last commit. `wake` is set
    whenever the parent writes to the wake-up pipe `wake_fd`.
    """

    def __init__(
        self,
        parent_pid: int,
        stop: threading.Event,
        wake_fd: int | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        self.parent_pid = parent_pid
        self.stop = stop
        self.wake_fd = wake_fd
        self.wake = wake if wake is not None else threading.Event()
        self.budget_s: float | None = None
        self._once = threading.Lock()  # the signal handler and the watch thread may both see it gone
        self._thread = threading.Thread(target=self._run, name="ingest-parent-watch", daemon=True)

    def start(self) -> None:
        """Within `handled_signals(watch.on_signal)`, so the death signal finds its handler."""
        set_parent_death_signal(signal.SIGTERM)
        if not self.parent_alive():  # it died before the death signal was set
            self._gone()
        self._thread.start()

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid

    def on_signal(self, signum: int) -> None:
        """SIGINT or SIGTERM (`sensors.shutdown.handled_signals` calls this in a thread of its own)."""
        if not self.parent_alive():
            self._gone()

    def _gone(self) -> None:
        if self._once.acquire(blocking=False):  # never released: said once
            logger.warning("ingest process %d is gone; the raw writer writes what it can and stops", self.parent_pid)
            self.stop.set()

    def _run(self) -> None:
        fd, wake_fd = sys.stdin.fileno(), self.wake_fd
        watched = [fd] if wake_fd is None else [fd, wake_fd]
        received = b""
        while not self.stop.is_set():
            if not self.parent_alive():
                self._gone()
                return
            readable, _, _ = select.select(watched, [], [], PARENT_POLL_S)
            if wake_fd is not None and wake_fd in readable:
                if os.read(wake_fd, 4096):
                    self.wake.set()
                else:  # the parent closed it (stopping, or gone: stdin says which)
                    watched.remove(wake_fd)
            if fd not in readable:
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
    """The child's entry: `python -m ingest.writerproc LOG_LEVEL --client-id ID --home DIR --parent-pid PID
    [--wake-fd FD] [--quiet]`, a `smartcity ingest --role write` limited to its parent's stream.

    It skips the `smartcity` command group and `ingest.cli`, whose imports (click, rich, the registry
    with pydantic, paho) would double the child's memory and start-up time; smartcity.toml is in the
    environment the parent passed on.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("log_level", type=int)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument(WAKE_FD_OPTION, type=int)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    from ingest.metrics import status_line
    from ingest.service import IngestService, influx_sinks
    from ingest.settings import IngestSettings
    from sensors.errors import SmartcityError
    from sensors.shutdown import handled_signals

    try:
        settings = IngestSettings.from_env(role="write", client_id=args.client_id, home=args.home)
        influx, sink_factory, metrics_sink_factory = influx_sinks()
        stop, wake = threading.Event(), threading.Event()
        watch = ParentWatch(args.parent_pid, stop, args.wake_fd, wake)
        interval = settings.metrics_interval_s
        service = IngestService(
            settings,
            None,
            sink_factory,
            on_report=None if args.quiet else lambda fields: print(status_line(fields, interval), file=sys.stderr),
            metrics_sink_factory=metrics_sink_factory,
            writer_child=True,
            writer_wake=wake,
            shutdown_budget=lambda: watch.budget_s,
        )
        with handled_signals(watch.on_signal):
            watch.start()
            print(f"ingest {settings.client_id}: role write, {settings.stream_dir} -> {influx.url}", file=sys.stderr)
            service.run(stop)
    except SmartcityError as err:
        print(f"smartcity ingest: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
