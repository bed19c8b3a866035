"""Helpers of the pipeline tests: pipelines on the safe local runners, and points in comparable form."""

from __future__ import annotations

import uuid
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines.options import beam_options
from pipelines.points import PointBatch
from sensors.registry import Registry, default_registry


@pytest.fixture(scope="session")
def registry() -> Registry:
    return default_registry()


def batch_pipeline() -> TestPipeline:
    """A TestPipeline on the project's default local runner (FnApiRunner, never Prism)."""
    return TestPipeline(options=beam_options([]), blocking=True)


def streaming_pipeline() -> TestPipeline:
    """A TestPipeline for TestStream: streaming on the BundleBasedDirectRunner."""
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(options=options, blocking=True)


def row(point: Any) -> tuple[str, tuple[tuple[str, str], ...], int, tuple[tuple[str, Any], ...]]:
    """A point as a hashable, order-free row: (measurement, sorted tags, time, sorted fields)."""
    return point.measurement, tuple(sorted(point.tags.items())), point.time, tuple(sorted(point.fields.items()))


def to_rows(batches: beam.PCollection, label: str = "") -> beam.PCollection:
    return batches | f"{label}ToPoints" >> beam.FlatMap(PointBatch.points) | f"{label}ToRows" >> beam.Map(row)


_COLLECTED: dict[str, list[Any]] = {}


def _collect(element: Any, key: str) -> None:
    _COLLECTED[key].append(element)


def collect(pcoll: beam.PCollection, label: str = "Collect") -> list[Any]:
    """A list that holds the elements of `pcoll` once the (in-process) pipeline has run."""
    key = uuid.uuid4().hex
    _COLLECTED[key] = []
    pcoll | label >> beam.Map(_collect, key)
    return _COLLECTED[key]
