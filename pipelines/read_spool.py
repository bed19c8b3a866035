"""ReadSpool: the readings of closed spool segments in a time range.

    PBegin -> PCollection[ReadingBatch]   (one batch per segment and kind)

The spool (`sensors.spool`) is ingest's durable log: one folder per ingest
process, closed segments `readings-NNNNNNNNNNNN.seg` of checksummed JSON lines
(sample below), each with a `.seg.meta.json` giving its event-time range and
kinds. Only closed segments are read; the listing happens when the transform is
built, so a run reads a fixed set of files and re-running it reads the same.

    1b0e3a9c {"sensor_id":"pkt-aq-001","kind":"air_quality","vendor":"siam-airsense",
              "super_cluster":"andaman","city":"phuket","district":"kathu",
              "site":"patong-beach","ts":1764028800000,"values":{"pm25":12.5,"pm10":20.0},
              "seq":17,"received":1764028800420}

Segments whose metadata shows no overlap with the range, or none of the wanted
kinds, are not opened. Readings outside `[start_ms, end_ms)` are dropped.
Lines that do not verify are skipped, never raised: they are counted
(`corrupt_lines`), logged, and emitted as `"path:line"` strings on the
transform's `invalid` output (`read.invalid` after applying `read`); readings of
kinds the registry no longer knows are counted (`unknown_kind`). A segment
holding fewer readings than its metadata lists (cut or damaged after it was
closed) is logged with the number missing (`lost_readings`); one whose
metadata is unreadable is left out and named in `skipped`.
With a `cache_dir`, each segment's columns are kept as Parquet (see
`pipelines.columns`) and read from there the next time.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.batch import ReadingBatch
from pipelines.columns import SegmentDecoder, load_segment, metrics_by_kind
from sensors.registry import Registry
from sensors.spool import READINGS, SegmentInfo, closed_segments

logger = logging.getLogger(__name__)

INVALID = "invalid"  # the tag of the output that names the lines that do not verify


class ReadSpool(beam.PTransform):
    """Closed segments under `root` with readings in `[start_ms, end_ms)` (None: unbounded), as batches."""

    def __init__(
        self,
        root: Path,
        registry: Registry,
        start_ms: int | None = None,
        end_ms: int | None = None,
        *,
        kinds: Collection[str] | None = None,
        cache_dir: Path | None = None,
        segments: Sequence[SegmentInfo] | None = None,
        skipped: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics_by_kind(registry)
        self.kinds = frozenset(self.metrics if kinds is None else kinds)
        self.start_ms, self.end_ms = start_ms, end_ms
        self.cache_dir = cache_dir
        listed = closed_segments(root, READINGS, start_ms, end_ms, skipped) if segments is None else list(segments)
        # Metadata lists the kinds in a segment: skip those with none we want.
        self.segments = [s for s in listed if not s.kinds or not self.kinds.isdisjoint(s.kinds)]

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        decoded = (
            pbegin
            | "ListSegments" >> beam.Create(self.segments)
            | "DecodeSegments"
            >> beam.ParDo(
                DecodeSegment(self.metrics, self.kinds, self.start_ms, self.end_ms, self.cache_dir)
            ).with_outputs(INVALID, main="readings")
        )
        self.invalid: beam.PCollection = decoded[INVALID]
        return decoded.readings


class DecodeSegment(beam.DoFn):
    """SegmentInfo -> the segment's readings in range, one `ReadingBatch` per kind."""

    def __init__(
        self,
        metrics: dict[str, tuple[str, ...]],
        kinds: frozenset[str],
        start_ms: int | None,
        end_ms: int | None,
        cache_dir: Path | None,
    ) -> None:
        # Every kind is decoded (so a segment's column copy is complete); only `kinds` are emitted.
        self.metrics, self.kinds = metrics, kinds
        self.start_ms, self.end_ms = start_ms, end_ms
        self.cache_dir = cache_dir
        self.segments = Metrics.counter(self.__class__, "segments")
        self.cached = Metrics.counter(self.__class__, "segments_from_cache")
        self.readings = Metrics.counter(self.__class__, "readings")
        self.corrupt = Metrics.counter(self.__class__, "corrupt_lines")
        self.unknown_kind = Metrics.counter(self.__class__, "unknown_kind")
        self.lost = Metrics.counter(self.__class__, "lost_readings")

    def setup(self) -> None:
        self.decoder = SegmentDecoder(self.metrics)  # built per worker: msgspec types do not pickle

    def process(self, segment: SegmentInfo) -> Iterator[ReadingBatch | beam.pvalue.TaggedOutput]:
        decoded = load_segment(segment, self.decoder, self.cache_dir)
        for number in decoded.bad_lines:
            yield beam.pvalue.TaggedOutput(INVALID, f"{segment.path}:{number}")
        self.segments.inc()
        self.cached.inc(int(decoded.from_cache))
        self.corrupt.inc(decoded.corrupt)
        self.unknown_kind.inc(decoded.unknown_kind)
        # A segment cut or damaged after it was closed holds fewer readings than its metadata lists (its
        # Parquet copy, when there is one, is read instead and is complete).
        lost = segment.count - sum(len(batch) for batch in decoded.batches) - decoded.unknown_kind
        if lost > 0:
            logger.error("%s: %d of its %d readings do not verify (cut or damaged); skipped", segment.path, lost,
                         segment.count)  # fmt: skip
            self.lost.inc(lost)
        for batch in decoded.batches:
            if batch.kind not in self.kinds:
                continue
            batch = batch.between(self.start_ms, self.end_ms)
            if len(batch):
                self.readings.inc(len(batch))
                yield batch
