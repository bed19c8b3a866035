"""Raw writer: follows spool streams and writes every reading to InfluxDB's raw retention policy.

Each stream has a committed position (`Offsets`, an atomically replaced file
in the stream folder), saved only after InfluxDB acknowledged everything
before it. A crash or an InfluxDB outage therefore replays from the last
saved position, and replaying is harmless: a reading becomes the point
(measurement `{kind}`, sensor tags, time `ts`), so the same (sensor, ts)
overwrites the same point with the same values.

While InfluxDB is down the writer retries the same batch with capped
exponential backoff, forever: the spool holds the data, so nothing is dropped
and nothing is skipped. Garbage collection of the spool (`collect_garbage`)
runs here because only the writer knows what InfluxDB has; it also waits for
the pipelines' checkpoint (`{home}/pipelines/checkpoint.json`, written by
`pipeline run --follow`) when there is one.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path

from ingest.metrics import LineSink, Metrics
from ingest.retention import collect_garbage
from ingest.spool import RAW_WRITER_LOCK, StreamLocked, lock_stream, streams
from ingest.spooltail import Offsets, Position, StreamTail, lag_seconds
from sensors.checkpoint import Checkpoint, CheckpointError
from storage.errors import StorageWriteError
from storage.schema import RawLines
from storage.writer import WriteStats

logger = logging.getLogger(__name__)

RETRY_MIN_DELAY_S = 0.5
RESCAN_INTERVAL_S = 1.0
GC_INTERVAL_S = 60.0
# The saved offset only bounds what a restart writes again, and rewrites are idempotent: saving it
# (with an fsync) at most once a second instead of after every batch costs at most a second of
# rewrites after a crash, and saves the fsync that was 14% of the writer's time under load.
OFFSET_SAVE_INTERVAL_S = 1.0
# After closing the sink on a late stop, how long the writer thread gets to notice.
ABORT_WAIT_S = 0.5
# After a disk error (e.g. the spool's disk is full), how long the writer waits before it tries again.
DISK_RETRY_S = 2.0


class _Stream:
    def __init__(self, stream_dir: Path) -> None:
        self.dir = stream_dir
        # One raw writer per stream (e.g. a `--role all` process and a `--role write` one).
        self.lock_fd = lock_stream(stream_dir, RAW_WRITER_LOCK, "another process writes this stream to InfluxDB")
        self.offsets = Offsets(stream_dir)
        self.saved = self.offsets.load()
        self.tail = StreamTail(stream_dir, self.saved)
        self.save_due = 0.0

    def save(self, now: float) -> None:
        """Record the position as written (everything before it is acknowledged by InfluxDB)."""
        self.offsets.save(self.tail.position)
        self.saved = self.tail.position
        self.save_due = now + OFFSET_SAVE_INTERVAL_S


class RawWriter:
    """Writes the readings of spool streams to InfluxDB; `run()` in a thread, `stop()` to drain and end.

    `stream_names` limits it to some streams (a process writing its own
    stream); None follows every stream folder under `spool_root`, including
    ones that appear later (a separate `--role write` process).
    """

    def __init__(
        self,
        spool_root: Path,
        stream_names: list[str] | None,
        sink: LineSink,
        metrics: Metrics,
        *,
        batch_points: int,
        poll_interval_s: float,
        retry_max_delay_s: float,
        retention_s: float,
        pipeline_checkpoint: Path | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        self.spool_root = spool_root
        self.stream_names = stream_names
        self.sink = sink
        self.metrics = metrics
        self.batch_points = batch_points
        self.poll_interval_s = poll_interval_s
        self.retry_max_delay_s = retry_max_delay_s
        self.retention_s = retention_s
        self.pipeline_checkpoint = pipeline_checkpoint
        self.raw_lines = RawLines()  # readings -> line protocol, each sensor's series key escaped once
        self._streams: dict[str, _Stream] = {}
        self._skipped: set[str] = set()  # written by another process; looked at again every GC interval
        self._waiting: set[str] = set()  # own streams another process still writes (logged once)
        self._stop = threading.Event()
        # Set when the spool has new records (`wake()`, e.g. after each group commit of the consumer):
        # the writer then reads at once instead of at its next poll, which is only the fallback.
        self._wake = wake if wake is not None else threading.Event()
        # Set if `run()` ended on an unexpected error: the service then exits non-zero, so that its
        # supervisor (the `all` process, or the service manager) restarts it rather than it idling.
        self.failed = threading.Event()
        self._deadline = float("inf")
        self._next_rescan = 0.0
        self._next_gc = 0.0
        self._thread = threading.Thread(target=self.run, name="ingest-raw-writer", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """New records are in the spool: read them now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float) -> None:
        """Write what the spool holds until `timeout_s`, then stop (an unfinished batch is replayed next run)."""
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("raw writer did not finish within %.1f s; the rest is written on the next start", timeout_s)
            self.sink.close()  # aborts a write that is retrying
            self._thread.join(ABORT_WAIT_S)
        for stream in self._streams.values():
            stream.tail.close()
            if stream.lock_fd is not None:
                os.close(stream.lock_fd)

    def run(self) -> None:
        try:
            while True:
                self._wake.clear()  # before reading: a wake-up during the step is not lost
                try:
                    progressed = self.step()
                except OSError as err:
                    # A full or failing disk (saving the offset, deleting segments): the readings stay in
                    # the spool. Reread from the saved positions and retry, rather than stop until a restart.
                    logger.error("raw writer: %s; retrying in %.0f s from the saved positions", err, DISK_RETRY_S)
                    for stream in self._streams.values():
                        stream.tail.close()
                        stream.tail = StreamTail(stream.dir, stream.saved)
                    if self._stop.wait(DISK_RETRY_S):
                        return
                    continue
                if self._stop.is_set():
                    if not progressed or time.monotonic() >= self._deadline:
                        return
                elif not progressed:
                    self._wake.wait(self.poll_interval_s)
        except Exception:
            logger.exception("the raw writer failed; readings stay in the spool and are written on the next start")
            self.failed.set()

    # -- work --------------------------------------------------------------------------------

    def step(self) -> bool:
        """One batch per stream; True if anything was written."""
        now = time.monotonic()
        if now >= self._next_rescan:
            self._next_rescan = now + RESCAN_INTERVAL_S
            self._discover()
        progressed = False
        for stream in list(self._streams.values()):
            batch = stream.tail.read_json(self.batch_points)
            self.metrics.corrupt_records += stream.tail.corrupt
            stream.tail.corrupt = 0
            self.metrics.count_damaged(stream.tail.damaged)
            stream.tail.damaged = []
            if batch:
                lines = self._lines(batch)
                del batch  # the readings go before the write, not after it (peak RSS of the writer)
                if not self._write(lines):
                    # Not acknowledged (shutting down): reread from the saved position next time.
                    stream.tail.close()
                    stream.tail = StreamTail(stream.dir, stream.saved)
                    return False
                progressed = True
            if stream.tail.position != stream.saved and (now >= stream.save_due or self._stop.is_set()):
                stream.save(now)
        if now >= self._next_gc and not self._stop.is_set():
            self._next_gc = now + GC_INTERVAL_S
            self._skipped.clear()
            self._collect_garbage()
        return progressed

    def _discover(self) -> None:
        names = self.stream_names
        if names is None:
            names = [path.name for path in streams(self.spool_root)]
        for name in names:
            if name in self._streams or name in self._skipped or not (self.spool_root / name).is_dir():
                continue
            try:
                stream = _Stream(self.spool_root / name)
            except StreamLocked as err:
                if self.stream_names is not None:
                    # This process's own stream: the writer of a process killed a moment ago may still be
                    # draining it (its child outlives it by up to shutdown_timeout_s). Try again next rescan.
                    if name not in self._waiting:
                        self._waiting.add(name)
                        logger.warning("waiting to write stream %s: %s", name, err)
                    continue
                self._skipped.add(name)
                logger.info("not writing stream %s: %s", name, err)
                continue
            self._waiting.discard(name)
            self._streams[name] = stream
            logger.info(
                "writing stream %s to InfluxDB from segment %d, byte %d", name, stream.saved.seq, stream.saved.offset
            )

    def _lines(self, records: list[bytes]) -> list[str]:
        """The line protocol of the readings' records; one it cannot carry is dropped and logged (validated
        readings should never be such), as is a record that is not a reading (a checksum that verified
        over bad JSON: a bug of the writer that wrote it)."""
        lines, refused, corrupt = self.raw_lines.record_lines(records)
        for reading, err in refused:
            self.metrics.dead_letters += 1
            logger.error("dropped a reading InfluxDB cannot store (%s): %r", err, reading)
        for error in corrupt:
            self.metrics.corrupt_records += 1
            logger.error("skipped a spool record that is not a reading: %s", error)
        return lines

    def _write(self, lines: list[str]) -> bool:
        """Write until InfluxDB acknowledges; False only if stopping passed its deadline first."""
        delay = RETRY_MIN_DELAY_S
        while True:
            started = time.monotonic()
            try:
                result = self.sink.write_encoded(lines, "ms")
            except StorageWriteError as err:
                self.metrics.write_retries += 1
                wait = min(delay, self.retry_max_delay_s) * random.uniform(0.8, 1.2)
                if self._stop.is_set() and time.monotonic() + wait >= self._deadline:
                    logger.warning("InfluxDB write failed while stopping (%s); the spool keeps the readings", err)
                    return False
                logger.warning(
                    "writing %d points to InfluxDB failed (%s); retrying in %.1f s, the spool keeps them",
                    len(lines),
                    err,
                    wait,
                )
                if self._stop.is_set():
                    time.sleep(wait)
                else:
                    self._stop.wait(wait)
                delay *= 2
                continue
            dead = len(getattr(result, "dead_letters", ()))
            self.metrics.dead_letters += dead
            self.metrics.observe_write(len(lines) - dead, (time.monotonic() - started) * 1000)
            return True

    def _collect_garbage(self) -> None:
        if self.retention_s <= 0:
            return
        processed: dict[str, int] | None = None
        if self.pipeline_checkpoint is not None and self.pipeline_checkpoint.exists():
            try:
                processed = Checkpoint.load(self.pipeline_checkpoint).streams
            except CheckpointError as err:
                logger.warning("%s; keeping every segment", err)
                return
        for name, stream in self._streams.items():
            done = None if processed is None else processed.get(name, 0)
            collect_garbage(stream.dir, self.retention_s, stream.saved, done)

    def refresh_gauges(self, lag: bool = True) -> None:
        """Update the gauges (called by the metrics reporter): with `lag`, bytes not yet written and the
        age of the oldest reading not yet written (0 when InfluxDB has everything); a writer child
        leaves the lag to its parent."""
        if lag:
            streams = list(self._streams.values())
            self.metrics.spool_lag = sum(stream.tail.lag_bytes() for stream in streams)
            self.metrics.spool_lag_s = max((lag_seconds(stream.dir, stream.saved) for stream in streams), default=0.0)
        stats = getattr(self.sink, "stats", None)
        if isinstance(stats, WriteStats):
            self.metrics.storage_retries = stats.snapshot().retries

    @property
    def positions(self) -> dict[str, Position]:
        return {name: stream.saved for name, stream in self._streams.items()}
