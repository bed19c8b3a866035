"""Confirmed writes to InfluxDB 1.x and 2.x/3.x.

    with make_writer(settings) as writer:             # returns once InfluxDB acknowledged
        result = writer.write(points)                 # or raises StorageWriteError
        writer.write_lines(encoded, precision="ms")   # already line protocol (the pipelines' sink)
        writer.write_encoded(lines, precision="ms")   # lines of `Encoder`/`RawLines` (the raw writer)

One retry policy for both APIs: a request that fails with 5xx, 429, a timeout
or a connection error is retried with exponential backoff and jitter, at most
`max_retries` times and `retry_max_total_s` seconds, then `StorageWriteError`.
A request refused with 400, 413 or 422 is not retried: the batch is split in
halves until the refused points are alone; those go to the `on_dead_letter`
callback, every other point is written. 401, 403, 404 and other 4xx concern
the whole request (credentials, database) and raise `StorageWriteError`.
Rewriting a point is idempotent, so retries and bisection never duplicate data.

The requests themselves go through `storage.transports`: 1.x `/write` over
one keep-alive connection, or 2.x/3.x through influxdb-client (bucket
`{db}/{rp}`, token auth); `make_writer` picks one from the settings.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import cast

from storage.errors import StorageWriteError
from storage.line_protocol import PRECISIONS, Encoder, LineProtocolError, Point, Precision, split_lines
from storage.settings import InfluxSettings
from storage.transports import Response, TransientError, Transport, make_transport

logger = logging.getLogger(__name__)

# Refusals that concern some points of a batch: split it to find them.
BISECT_STATUSES = frozenset({400, 413, 422})
# Answers worth retrying besides 5xx.
RETRY_STATUSES = frozenset({408, 429})
# Server errors whose cure is the operator's, not a retry's: logged once per outage beside the retries.
# 1.6.7 answers 500 on a full WAL disk and keeps failing after room is made (its WAL writer keeps the
# error) until it restarts; the points it answered 500 for show in queries until then, and are gone after.
OPERATOR_HINTS = {
    "no space left on device": (
        "InfluxDB's disk is full: free space on its host, then restart InfluxDB (1.x goes on failing "
        "writes after room is made, until it restarts); the points are retried meanwhile"
    ),
}
# InfluxDB 1.x ends a partial-write error with the number of points it did not store.
_DROPPED = re.compile(r"dropped=([0-9]+)")


@dataclass(frozen=True)
class DeadLetter:
    """A point that was not written, and why: InfluxDB refused it on its own (HTTP `status` and
    InfluxDB's reason), or it cannot be represented in line protocol (`status` 0, `line` empty,
    `point` set)."""

    line: bytes
    precision: Precision
    status: int
    reason: str
    point: Point | None = None


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a confirmed write: `points` acknowledged, the rest dead-lettered."""

    points: int
    dead_letters: tuple[DeadLetter, ...] = ()


@dataclass(frozen=True)
class StatsSnapshot:
    """Writer figures for self-metrics. Counters are totals since start; latency and batch size over
    the last `WriteStats.WINDOW` acknowledged requests (latency includes retries)."""

    batches: int
    points: int
    bytes: int
    retries: int
    dead_letters: int
    failed_batches: int
    latency_s_last: float
    latency_s_mean: float
    latency_s_max: float
    batch_points_last: int
    batch_points_mean: float


class WriteStats:
    """Thread-safe counters of a writer; `snapshot()` for reporting."""

    WINDOW = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = self.points = self.bytes = self.retries = self.dead_letters = self.failed_batches = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=self.WINDOW)

    def record_batch(self, points: int, size: int, latency_s: float) -> None:
        with self._lock:
            self.batches += 1
            self.points += points
            self.bytes += size
            self._recent.append((latency_s, points))

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_dead_letter(self) -> None:
        with self._lock:
            self.dead_letters += 1

    def record_failure(self) -> None:
        with self._lock:
            self.failed_batches += 1

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            recent = list(self._recent)
            counters = (self.batches, self.points, self.bytes, self.retries, self.dead_letters, self.failed_batches)
        latencies = [latency for latency, _ in recent]
        sizes = [points for _, points in recent]
        return StatsSnapshot(
            *counters,
            latency_s_last=latencies[-1] if latencies else 0.0,
            latency_s_mean=sum(latencies) / len(latencies) if latencies else 0.0,
            latency_s_max=max(latencies, default=0.0),
            batch_points_last=sizes[-1] if sizes else 0,
            batch_points_mean=sum(sizes) / len(sizes) if sizes else 0.0,
        )


@dataclass
class _Batch:
    body: bytes
    precision: Precision
    points: int
    lines: Sequence[str] | None = None  # the lines of `body`, when known (saves re-splitting to bisect)

    @classmethod
    def of_lines(cls, lines: list[str], precision: Precision) -> _Batch:
        lines.append("")
        body = "\n".join(lines).encode()
        lines.pop()
        return cls(body, precision, len(lines), lines)


def _count_lines(data: bytes) -> int:
    if b'"' in data or b"\\" in data:
        return len(split_lines(data))
    return sum(1 for line in data.split(b"\n") if line.strip(b" \t"))


class Writer:
    """Confirmed writes into one retention policy: `write()` returns once InfluxDB acknowledged every
    point (or dead-lettered the ones it refused), else raises `StorageWriteError`. Thread-safe."""

    def __init__(
        self,
        settings: InfluxSettings,
        transport: Transport,
        *,
        rp: str | None = None,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
    ) -> None:
        self.settings = settings
        self.rp = rp or settings.raw_rp
        self.stats = WriteStats()
        self._transport = transport
        self._on_dead_letter = on_dead_letter
        self._encoder = Encoder()
        self._encode_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.RLock()
        self._abort = threading.Event()
        self._random = random.Random()
        self._hinted: set[str] = set()  # OPERATOR_HINTS logged since the last acknowledged write

    # -- public API ---------------------------------------------------------------------------

    def write(self, points: Iterable[Point]) -> WriteResult:
        """Write `points` in batches of `batch_size`; returns when every point is acknowledged or
        dead-lettered, else raises `StorageWriteError`.

        Batch k+1 is encoded while batch k is on the wire. A point that line protocol cannot
        represent is dead-lettered (status 0) like one InfluxDB refuses; the others are written.
        """
        iterator = iter(points)
        size = self.settings.batch_size
        written = 0
        dead: list[DeadLetter] = []
        # Batches handed to the sender thread, oldest first; at most max_pending_batches wait.
        in_flight: collections.deque[tuple[concurrent.futures.Future[tuple[int, list[DeadLetter]]], int]]
        in_flight = collections.deque()
        try:
            while True:
                chunk = list(itertools.islice(iterator, size))
                if not chunk:
                    break
                groups: dict[str, list[str]] = {}
                with self._encode_lock:
                    dead.extend(self.encode_into(self._encoder, chunk, groups))
                if len(chunk) < size and len(groups) == 1 and not in_flight:
                    # The common small write (one batch): no thread hop.
                    [(precision, lines)] = groups.items()
                    done, letters = self.write_batch(_Batch.of_lines(lines, precision))  # type: ignore[arg-type]
                    written += done
                    dead.extend(letters)
                    continue
                for precision, lines in groups.items():
                    batch = _Batch.of_lines(lines, precision)  # type: ignore[arg-type]
                    while len(in_flight) >= self.settings.max_pending_batches:
                        done, letters = in_flight.popleft()[0].result()
                        written += done
                        dead.extend(letters)
                    in_flight.append((self._sender().submit(self.write_batch, batch), batch.points))
            while in_flight:
                done, letters = in_flight.popleft()[0].result()
                written += done
                dead.extend(letters)
        except StorageWriteError as err:
            # Stop what has not started; settle what has. `points` counts every point handed over
            # so far that InfluxDB did not acknowledge.
            failed = err.points
            while in_flight:
                future, count = in_flight.popleft()
                if future.cancel():
                    failed += count
                    continue
                try:
                    done, letters = future.result()
                except StorageWriteError:
                    failed += count
                else:
                    written += done
                    dead.extend(letters)
            raise StorageWriteError(f"{err} ({written} points of this write were acknowledged)", failed) from err
        finally:
            for future, _ in in_flight:
                future.cancel()
            concurrent.futures.wait([future for future, _ in in_flight])
        return WriteResult(written, tuple(dead))

    def encode_into(self, encoder: Encoder, chunk: Sequence[Point], out: dict[str, list[str]]) -> list[DeadLetter]:
        """Encode `chunk` into `out`; points that cannot be represented become dead letters."""
        marks = {precision: len(lines) for precision, lines in out.items()}
        try:
            encoder.add_lines(chunk, out)
            return []
        except LineProtocolError:
            pass
        for key in list(out):  # undo the partial chunk, then go point by point
            if key in marks:
                del out[key][marks[key] :]
            else:
                del out[key]
        letters = []
        for point in chunk:
            try:
                encoder.add_lines((point,), out)
            except LineProtocolError as err:
                given = getattr(point, "precision", "ns")
                letter = DeadLetter(
                    b"",
                    cast(Precision, given if given in PRECISIONS else "ns"),
                    0,
                    f"cannot be written as line protocol: {err}",
                    point,
                )
                self._dead_letter(letter)
                letters.append(letter)
        if letters:
            logger.warning(
                "%s of %s points cannot be written as line protocol, e.g.: %s",
                len(letters),
                len(chunk),
                letters[0].reason,
            )
        return letters

    def _sender(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._encode_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="smartcity-influx-send")
            return self._executor

    def write_lines(self, data: bytes | Sequence[bytes], precision: Precision = "ns") -> WriteResult:
        """Write pre-encoded line protocol (one request per bytes object; a sequence is sent in order)."""
        if precision not in PRECISIONS:
            raise LineProtocolError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        batches = [_Batch(bytes(chunk), precision, _count_lines(bytes(chunk))) for chunk in chunks if chunk]
        return self._write_batches(batches)

    def write_encoded(self, lines: Sequence[str], precision: Precision = "ns") -> WriteResult:
        """Write lines encoded by `storage.line_protocol` (e.g. `storage.schema.RawLines`; one point each,
        no newline), in batches of `batch_size`; bisected like `write()`'s if InfluxDB refuses some."""
        if precision not in PRECISIONS:
            raise LineProtocolError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        size = self.settings.batch_size
        return self._write_batches(
            [_Batch.of_lines(list(lines[start : start + size]), precision) for start in range(0, len(lines), size)]
        )

    def close(self) -> None:
        """Stop retrying (a write in progress fails) and close the connection."""
        self._abort.set()
        # A request on the wire fails now: else a hung InfluxDB (accepting, never answering) holds a
        # shutdown for up to `timeout_s`, past the caller's budget.
        self._transport.abort()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        with self._lock:
            self._transport.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def describe(self) -> str:
        return self._transport.describe(self.rp)

    # -- internals ----------------------------------------------------------------------------

    def _write_batches(self, batches: Sequence[_Batch]) -> WriteResult:
        written = 0
        dead: list[DeadLetter] = []
        for index, batch in enumerate(batches):
            try:
                done, letters = self.write_batch(batch)
            except StorageWriteError as err:
                remaining = sum(b.points for b in batches[index:])
                raise StorageWriteError(f"{err} ({written} points of this write were acknowledged)", remaining) from err
            written += done
            dead.extend(letters)
        return WriteResult(written, tuple(dead))

    def write_batch(self, batch: _Batch) -> tuple[int, list[DeadLetter]]:
        """One request (retried), bisected if InfluxDB refuses some of its points."""
        with self._lock:
            response = self._post_retrying(batch.body, batch.precision, batch.points)
            if response.status < 300:
                return batch.points, []
            lines = [line.encode() for line in batch.lines] if batch.lines is not None else split_lines(batch.body)
            logger.debug(
                "%s refused a batch of %s points (HTTP %s: %s); bisecting",
                self.describe(),
                len(lines),
                response.status,
                response.message,
            )
            written, letters = self._bisect(lines, batch.precision, response)
            if letters:
                logger.warning(
                    "%s refused %s of %s points, e.g. (HTTP %s: %s) %r",
                    self.describe(),
                    len(letters),
                    len(lines),
                    letters[0].status,
                    letters[0].reason,
                    letters[0].line[:300],
                )
            return written, letters

    def _bisect(self, lines: list[bytes], precision: Precision, response: Response) -> tuple[int, list[DeadLetter]]:
        dropped = _DROPPED.search(response.message)
        if len(lines) <= 1 or (dropped and int(dropped.group(1)) == len(lines)):
            # One point left, or InfluxDB 1.x says it dropped all of them (e.g. all older than the RP).
            letters = [DeadLetter(line, precision, response.status, response.message) for line in lines]
            for letter in letters:
                self._dead_letter(letter)
            return 0, letters
        middle = len(lines) // 2
        written = 0
        dead: list[DeadLetter] = []
        for half in (lines[:middle], lines[middle:]):
            half_response = self._post_retrying(b"\n".join(half) + b"\n", precision, len(half))
            if half_response.status < 300:
                written += len(half)
            else:
                done, letters = self._bisect(half, precision, half_response)
                written += done
                dead.extend(letters)
        return written, dead

    def _dead_letter(self, letter: DeadLetter) -> None:
        self.stats.record_dead_letter()
        logger.debug("dead letter (HTTP %s: %s): %r", letter.status, letter.reason, letter.line[:300])
        if self._on_dead_letter is None:
            return
        try:
            self._on_dead_letter(letter)
        except Exception:
            logger.exception("the on_dead_letter callback raised; the refused point is only in this log")

    def _hint(self, message: str) -> None:
        for cause, hint in OPERATOR_HINTS.items():
            if cause in message and cause not in self._hinted:
                self._hinted.add(cause)
                logger.error("%s (%s)", hint, self.describe())

    def _post_retrying(self, body: bytes, precision: Precision, points: int) -> Response:
        """Post until acknowledged or refused for bisection; raise `StorageWriteError` otherwise."""
        s = self.settings
        started = time.monotonic()
        delay = s.retry_initial_delay_s
        for attempt in itertools.count():
            if self._abort.is_set():
                raise StorageWriteError(f"writer to {self.describe()} was closed", points)
            response: Response | None
            try:
                response = self._transport.post(body, precision, self.rp)
            except TransientError as err:
                problem = str(err)
                response = None
            if response is not None:
                if response.status < 300:
                    self._hinted.clear()
                    self.stats.record_batch(points, len(body), time.monotonic() - started)
                    logger.debug("wrote %s points (%s bytes) to %s", points, len(body), self.describe())
                    return response
                if response.status in BISECT_STATUSES:
                    return response
                problem = f"HTTP {response.status}: {response.message}"
                self._hint(response.message)
                if response.status < 500 and response.status not in RETRY_STATUSES:
                    self.stats.record_failure()
                    raise StorageWriteError(f"InfluxDB refused a write to {self.describe()}: {problem}", points)
            elapsed = time.monotonic() - started
            wait = min(delay, s.retry_max_delay_s) * (1 + s.retry_jitter * (2 * self._random.random() - 1))
            if response is not None and response.retry_after_s is not None:
                wait = max(wait, response.retry_after_s)
            if attempt >= s.max_retries or elapsed + wait > s.retry_max_total_s:
                self.stats.record_failure()
                logger.error(
                    "giving up a batch of %s points to %s after %s attempts in %.1f s: %s",
                    points,
                    self.describe(),
                    attempt + 1,
                    elapsed,
                    problem,
                )
                raise StorageWriteError(
                    f"write of {points} points to {self.describe()} failed after {attempt + 1} attempts "
                    f"in {elapsed:.1f} s: {problem}",
                    points,
                )
            self.stats.record_retry()
            logger.warning(
                "write of %s points to %s failed (%s); retry %s/%s in %.2f s",
                points,
                self.describe(),
                problem,
                attempt + 1,
                s.max_retries,
                wait,
            )
            if self._abort.wait(wait):
                raise StorageWriteError(f"writer to {self.describe()} was closed while retrying: {problem}", points)
            delay *= s.retry_backoff_base
        raise AssertionError("unreachable")


def make_writer(
    settings: InfluxSettings,
    *,
    rp: str | None = None,
    on_dead_letter: Callable[[DeadLetter], None] | None = None,
) -> Writer:
    """A confirmed writer into `rp` (default: the raw RP): 1.x `/write`, or 2.x/3.x when a token is set."""
    return Writer(settings, make_transport(settings), rp=rp, on_dead_letter=on_dead_letter)
