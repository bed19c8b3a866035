"""The ingest service: consumer, spool, raw writer and self-metrics wired together for one process.

    service = IngestService(settings, contract, sink_factory=lambda: make_writer(influx))
    service.run(stop)          # returns after `stop` is set and everything is drained

With `writer_command`, a role `all` service runs its raw writer as that child
process (`ingest.writerproc`) instead of a thread; the child is the same
service with role `write` and `writer_child=True` (only its parent's stream,
only the writer's metric fields, under the same instance).

Shutdown (SIGTERM/SIGINT sets `stop`) within `shutdown_timeout_s`: the
consumer stops taking messages, commits and acknowledges what it received
and closes its open segments; the raw writer (thread or child) writes what
the spool holds until the deadline (the rest is written on the next start);
a last metrics point is written. A raw writer thread that fails on an unexpected
error ends the service with `WriterFailed`, so that what runs it restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ingest.metrics import LineSink, Metrics, PointSink, Reporter, consumer_field, writer_field
from ingest.rawwriter import RawWriter
from ingest.settings import IngestSettings
from ingest.spool import SpoolError, usage_bytes
from ingest.spooltail import Offsets, Position, lag_bytes, lag_seconds
from ingest.writerproc import WAKE_FD_OPTION, WriterSupervisor
from sensors.errors import SmartcityError
from sensors.home import Home
from storage.line_protocol import FieldValue
from storage.settings import InfluxSettings

if TYPE_CHECKING:
    from ingest.consumer import Consumer
    from sensors.contract import Contract

logger = logging.getLogger(__name__)

# Share of the shutdown budget the consumer may use to commit, acknowledge and disconnect.
CONSUMER_STOP_SHARE = 0.4
# Kept back from the raw writer at shutdown: aborting a retrying write, then the last metrics report.
SHUTDOWN_MARGIN_S = 1.5
# Kept back from the last metrics report: a hung InfluxDB holds it to its budget, then closing the sink
# aborts the request, and the process (a writer child: before its parent kills it) still has to exit.
EXIT_MARGIN_S = 0.5
# The self-metrics writer gives up quickly: a missed report is kept in the reporter's backlog.
METRICS_WRITE_RETRIES = 1
METRICS_WRITE_MAX_TOTAL_S = 3.0


class WriterFailed(SmartcityError):
    """The raw writer thread ended on an unexpected error (a bug); a restart resumes from the spool."""


def influx_sinks() -> tuple[InfluxSettings, Callable[[], LineSink], Callable[[], PointSink]]:
    """InfluxDB from `SMARTCITY_INFLUX_*`, and the sink factories of the raw writer and of the self-metrics."""
    from storage.writer import make_writer

    influx = InfluxSettings.from_env()
    metrics_influx = InfluxSettings.from_env(
        max_retries=METRICS_WRITE_RETRIES, retry_max_total_s=METRICS_WRITE_MAX_TOTAL_S
    )
    return influx, lambda: make_writer(influx), lambda: make_writer(metrics_influx)


class IngestService:
    """One `smartcity ingest` process.

    `sink_factory` makes a writer to InfluxDB for the raw writer; `metrics_sink_factory` (default: the
    same) one for the self-metrics, which should give up quickly rather than retry for long.
    `writer_command` (role `all`): run the raw writer as this child process. `writer_child` (role
    `write`): this process is such a child, `writer_wake` is set when its parent committed, and
    `shutdown_budget()` (when not None) is the time its parent gave it to stop, instead of
    `shutdown_timeout_s`.
    """

    def __init__(
        self,
        settings: IngestSettings,
        contract: Contract | None,
        sink_factory: Callable[[], LineSink],
        on_report: Callable[[dict[str, FieldValue]], None] | None = None,
        metrics_sink_factory: Callable[[], PointSink] | None = None,
        *,
        writer_command: Sequence[str] | None = None,
        writer_child: bool = False,
        writer_wake: threading.Event | None = None,
        shutdown_budget: Callable[[], float | None] | None = None,
    ) -> None:
        self.settings = settings
        self.contract = contract
        self.sink_factory = sink_factory
        self.metrics_sink_factory = metrics_sink_factory or sink_factory
        self.on_report = on_report
        self.metrics = Metrics()
        self.consumer: Consumer | None = None
        self.writer: RawWriter | None = None
        self.reporter: Reporter | None = None
        self.writer_command = writer_command if settings.role == "all" else None
        self.writer_child = writer_child
        self.writer_wake = writer_wake
        self.supervisor: WriterSupervisor | None = None
        self.shutdown_budget = shutdown_budget

    def start(self) -> None:
        s = self.settings
        if s.role in ("all", "consume"):
            self.consumer = self._make_consumer()
        if self.writer_command is not None:
            self.supervisor = WriterSupervisor(self.writer_command, wake_option=WAKE_FD_OPTION)
        elif s.role in ("all", "write"):
            s.spool_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.writer = RawWriter(
                s.spool_root,
                [s.client_id] if s.role == "all" or self.writer_child else None,
                self.sink_factory(),
                self.metrics,
                batch_points=s.write_batch_points,
                poll_interval_s=s.write_poll_interval_ms / 1000,
                retry_max_delay_s=s.write_retry_max_delay_s,
                retention_s=s.spool_retention_h * 3600,
                pipeline_checkpoint=Home(s.home).checkpoint,
                wake=self.writer_wake,
            )
        # Each group commit wakes the raw writer, in the child or in this process.
        if self.consumer is not None and self.supervisor is not None:
            self.consumer.on_commit = self.supervisor.notify
        elif self.consumer is not None and self.writer is not None:
            self.consumer.on_commit = self.writer.wake
        # Parent and child report under the same instance, each only the fields of its own loops, so
        # that sum() and max() over the instance stay exact.
        keep = consumer_field if self.supervisor is not None else writer_field if self.writer_child else None
        self.reporter = Reporter(
            self.metrics, s.client_id, self.metrics_sink_factory(), s.metrics_interval_s, self.on_report, self._refresh,
            keep=keep,
        )  # fmt: skip
        if self.consumer is not None:
            self.metrics.count_damaged(self.consumer.spool.damaged)  # after the reporter took its baseline
            self.consumer.start()
        if self.writer is not None:
            self.writer.start()
        if self.supervisor is not None:
            self.supervisor.start()
        self.reporter.start()
        logger.info("ingest %s started (role %s, spool %s)", s.client_id, s.role, s.spool_root)

    def _make_consumer(self) -> Consumer:
        # Imported here: a raw writer process (the child of role all) needs neither paho, the
        # contract's registry nor numpy, and skipping them keeps it small.
        from ingest.consumer import Consumer, Pending
        from ingest.history import History
        from ingest.rejectbudget import RejectBudget
        from ingest.retention import expire_rejects
        from ingest.spool import StreamWriter

        s = self.settings
        assert self.contract is not None, "a consumer needs the contract"
        spool: StreamWriter[Pending] = StreamWriter(
            s.stream_dir,
            segment_max_bytes=int(s.segment_max_mib * 2**20),
            segment_max_age_s=s.segment_max_age_s,
        )
        for recovered in spool.recovered:
            logger.info("recovered %s: %d records kept, %d bytes cut", recovered.path.name, recovered.records,
                        recovered.truncated_bytes)  # fmt: skip
        # Before the first message: reject segments past their retention go, the reject budget and
        # the conflict index are rebuilt from what the spool holds (a restart resets neither).
        expire_rejects(s.stream_dir, s.reject_retention_h * 3600)
        budget = RejectBudget(
            s.reject_store_per_s, int(s.reject_store_max_mib * 2**20), int(s.reject_retention_h * 3_600_000)
        )
        budget.rebuild(s.stream_dir)
        history = History(self.contract.max_age_ms, max_bytes=int(s.history_max_mib * 2**20))
        history.rebuild(s.stream_dir)
        return Consumer(s, self.contract, spool, self.metrics, history, budget)

    def _refresh(self) -> None:
        if self.writer is not None:
            self.writer.refresh_gauges(lag=not self.writer_child)
        elif self.supervisor is not None:
            # The writer child's lag, measured here from the position it saved: a dead, crash-looping or
            # hung child reports nothing itself, and its lag must still grow (the ingest-lag alert).
            stream_dir = self.settings.stream_dir
            try:
                saved = Offsets(stream_dir).load()
            except SpoolError:
                saved = Position()  # unreadable: the child cannot start either, and logs why
            self.metrics.spool_lag = lag_bytes(stream_dir, saved)
            self.metrics.spool_lag_s = lag_seconds(stream_dir, saved)
        # The consumer keeps spool_bytes up to date itself; a writer child leaves it to its parent.
        if self.consumer is None and not self.writer_child:
            self.metrics.spool_bytes = usage_bytes(self.settings.spool_root)

    def stop(self) -> None:
        """Drain and stop within `shutdown_timeout_s`."""
        given = self.shutdown_budget() if self.shutdown_budget is not None else None
        budget = given if given is not None else self.settings.shutdown_timeout_s
        deadline = time.monotonic() + budget
        if self.consumer is not None:
            self.consumer.stop(budget * CONSUMER_STOP_SHARE)
        if self.supervisor is not None:  # after the consumer's last commit, so the child writes it too
            self.supervisor.stop(max(0.1, deadline - time.monotonic() - SHUTDOWN_MARGIN_S / 2))
        if self.writer is not None:
            self.writer.stop(max(0.1, deadline - time.monotonic() - SHUTDOWN_MARGIN_S))
            self.writer.sink.close()
        if self.reporter is not None:
            self.reporter.stop(max(0.1, deadline - time.monotonic() - EXIT_MARGIN_S))
            self.reporter.sink.close()
        logger.info("ingest %s stopped", self.settings.client_id)

    def __enter__(self) -> IngestService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, stop: threading.Event) -> None:
        """Start, serve until `stop` is set (or the broker refuses us for good), then drain and stop."""
        with self:
            failed = [part.failed for part in (self.consumer, self.writer) if part is not None]
            while not stop.wait(0.1):
                if any(event.is_set() for event in failed):
                    break
        if self.consumer is not None and self.consumer.fatal is not None:
            raise self.consumer.fatal
        if self.writer is not None and self.writer.failed.is_set():
            raise WriterFailed(
                "the raw writer failed (its traceback is logged above); the spool keeps the readings, "
                "and a restart writes them"
            )
