"""WriteToInflux: the pipelines' one sink, point batches into InfluxDB through `storage.writer`.

    PCollection[PointBatch] -> PCollection[int]   (points acknowledged, one count per bundle)

Concepts: a DoFn with a lifecycle (`setup` opens the writers once per worker,
`finish_bundle` waits for the bundle's writes, `teardown` closes); writes in
requests of `InfluxSettings.batch_size` lines whatever the size of the incoming
batches.

Writes do not hold the pipeline up: `process` encodes a batch's line protocol
column by column (`PointBatch.lines`) and hands each request to one of
`WRITERS` threads, each with its own `Writer` (its own keep-alive connection),
then goes on computing; at most `max_pending_batches` requests per thread wait,
so a slow InfluxDB slows the pipeline instead of filling memory. With two
connections InfluxDB takes 1.4-1.5x the points of one (research: the write is
bound by its CPU, on 2 cores). A bundle ends only when InfluxDB acknowledged
every request of it, so a run (and a follow cycle's checkpoint) never gets
ahead of what is stored.

Every output of the pipelines goes to the rollup retention policy. A point's
identity in InfluxDB is its series and time, so a retried bundle or a re-run
over the same range rewrites the same points: the sink is idempotent. A write
that InfluxDB does not acknowledge after the storage layer's retries raises
`StorageWriteError` and fails the run (re-running it is safe); points that
InfluxDB refuses on their own are logged and counted (`dead_letters`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.points import PointBatch
from storage.line_protocol import Encoder
from storage.settings import InfluxSettings
from storage.writer import DeadLetter, Writer, WriteResult, make_writer

logger = logging.getLogger(__name__)

# Writer threads (and connections) per worker: InfluxDB's own CPU bounds the write, on 2 cores two keep it busy.
WRITERS = 2


class WriteToInflux(beam.PTransform):
    """Write point batches into the rollup RP of `settings` (default: `InfluxSettings.from_env()`)."""

    def __init__(self, settings: InfluxSettings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else InfluxSettings.from_env()

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            # Points carry their own time; the sink's counts (emitted when a bundle ends) belong to no window.
            | "IntoGlobalWindow" >> beam.WindowInto(GlobalWindows())
            | "WritePoints" >> beam.ParDo(_WritePoints(self.settings))
        )


class _WritePoints(beam.DoFn):
    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self.points_written = Metrics.counter(self.__class__, "points_written")
        self.dead_letters = Metrics.counter(self.__class__, "dead_letters")

    def setup(self) -> None:
        self.encoder = Encoder()
        self.prefixes: dict[tuple[str, tuple[str, ...]], str] = {}  # escaped series keys, by (measurement, tags)
        self._local = threading.local()
        self._writers: list[Writer] = []
        self._writers_lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(WRITERS, thread_name_prefix="smartcity-sink")
        self.in_flight: collections.deque[concurrent.futures.Future[WriteResult]] = collections.deque()
        self.pending: list[str] = []

    def _writer(self) -> Writer:
        """The calling sender thread's own writer (a writer holds one connection)."""
        writer: Writer | None = getattr(self._local, "writer", None)
        if writer is None:
            writer = make_writer(self.settings, rp=self.settings.rollup_rp, on_dead_letter=self._dead)
            self._local.writer = writer
            with self._writers_lock:
                self._writers.append(writer)
        return writer

    def _dead(self, letter: DeadLetter) -> None:
        self.dead_letters.inc()
        logger.error("InfluxDB refused a point (HTTP %s: %s): %s", letter.status, letter.reason, letter.line[:200])

    def _send(self, body: bytes) -> WriteResult:
        return self._writer().write_lines(body, "ms")

    def start_bundle(self) -> None:
        self.pending = []
        self.written = 0

    def process(self, batch: PointBatch) -> Iterator[int]:
        if len(self.prefixes) > 200_000:  # bounded: a fleet has a few thousand series per measurement
            self.prefixes.clear()
        self.pending.extend(batch.lines(self.encoder, self.prefixes))
        size = self.settings.batch_size
        while len(self.pending) >= size:
            self._submit(self.pending[:size])
            del self.pending[:size]
        return iter(())

    def _submit(self, lines: list[str]) -> None:
        lines.append("")
        self.in_flight.append(self.pool.submit(self._send, "\n".join(lines).encode()))
        # Back-pressure: at most max_pending_batches requests wait per writer thread.
        while len(self.in_flight) > WRITERS * self.settings.max_pending_batches:
            self._collect(self.in_flight.popleft())

    def _collect(self, future: concurrent.futures.Future[WriteResult]) -> None:
        result = future.result()  # raises StorageWriteError: the bundle (and the run) fails
        self.points_written.inc(result.points)
        self.written += result.points

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self.pending:
            self._submit(self.pending)
            self.pending = []
        while self.in_flight:
            self._collect(self.in_flight.popleft())
        if self.written:
            logger.debug("wrote %s points to %s", self.written, self.settings.url)
            yield WindowedValue(self.written, GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def teardown(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for writer in getattr(self, "_writers", []):
            writer.close()
