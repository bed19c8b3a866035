"""WriteToInflux: the pipelines' one sink, point batches into InfluxDB through `storage.writer`.

    PCollection[PointBatch] -> PCollection[int]   (points acknowledged, one count per bundle)

Concepts: a DoFn with a lifecycle (`setup` opens one writer per worker,
`finish_bundle` flushes, `teardown` closes); writes batched by
`InfluxSettings.batch_size` whatever the size of the incoming batches.

Every output of the pipelines goes to the rollup retention policy. A point's
identity in InfluxDB is its series and time, so a retried bundle or a re-run
over the same range rewrites the same points: the sink is idempotent. A write
that InfluxDB does not acknowledge after the storage layer's retries raises
`StorageWriteError` and fails the run (re-running it is safe); points that
InfluxDB refuses on their own are logged and counted (`dead_letters`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.points import PointBatch
from storage.line_protocol import Point
from storage.settings import InfluxSettings
from storage.writer import DeadLetter, Writer, make_writer

logger = logging.getLogger(__name__)


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
        self.writer: Writer = make_writer(self.settings, rp=self.settings.rollup_rp, on_dead_letter=self._dead)
        self.pending: list[Point] = []

    def _dead(self, letter: DeadLetter) -> None:
        self.dead_letters.inc()
        logger.error("InfluxDB refused a point (HTTP %s: %s): %s", letter.status, letter.reason, letter.line[:200])

    def start_bundle(self) -> None:
        self.pending = []

    def process(self, batch: PointBatch) -> Iterator[int]:
        self.pending.extend(batch.points())
        if len(self.pending) >= self.settings.batch_size:
            yield self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self.pending:
            yield WindowedValue(self._flush(), GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def _flush(self) -> int:
        points, self.pending = self.pending, []
        result = self.writer.write(points)
        self.points_written.inc(result.points)
        logger.debug("wrote %s points to %s", result.points, self.writer.describe())
        return result.points

    def teardown(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
