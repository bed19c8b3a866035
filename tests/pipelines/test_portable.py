"""Portability: the same pipeline on the PortableRunner (the job API that Flink, Spark and Dataflow
speak) with an in-process job service and a LOOPBACK worker gives exactly the local runner's output."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from deploy.servers import free_port
from pipelines.options import beam_options
from pipelines.read_spool import ReadSpool
from pipelines.thai_aqi import ThaiAQI
from pipelines.windowed_stats import WindowedStats
from sensors.registry import Registry
from tests.pipelines.conftest import collect, to_rows
from tests.pipelines.spooldata import HOUR, T0, fleet_readings, write_segments


@pytest.fixture(scope="module")
def job_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("job-service") / "job-service.log"
    with open(log, "wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if service.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Beam job service did not start: {log.read_text()[-2000:]}", pytrace=False)
                time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        service.terminate()
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()


def rollups_and_aqi(flags: list[str], spool: Path, registry: Registry) -> list[Any]:
    pipeline = beam.Pipeline(options=beam_options(flags))
    readings = pipeline | ReadSpool(spool, registry)
    rollups = collect(to_rows(readings | WindowedStats(registry), "Rollup"), "CollectRollups")
    aqi = collect(to_rows(readings | ThaiAQI(registry, hours=(T0, T0 + 3 * HOUR)), "Aqi"), "CollectAqi")
    result = pipeline.run()
    assert result.wait_until_finish() == "DONE"
    return sorted(rollups + aqi, key=repr)


def test_portable_runner_gives_the_local_runners_output(job_endpoint: str, registry: Registry, tmp_path: Path) -> None:
    rng = random.Random(5)
    sensors = registry.sensors_of(kind="air_quality")[::15] + registry.sensors_of(kind="noise")[::20]
    write_segments(tmp_path / "spool", fleet_readings(registry, sensors, T0, T0 + 3 * HOUR, rng), per_segment=700)
    local = rollups_and_aqi([], tmp_path / "spool", registry)
    portable = rollups_and_aqi(
        ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}", "--environment_type=LOOPBACK"],
        tmp_path / "spool",
        registry,
    )
    assert len(local) > 1_000 and any(row[0] == "aqi_1h" for row in local)
    assert portable == local
