"""Running the pipelines: runner options, whole-hour ranges, follow-cycle planning, the checkpoint, CLI errors."""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np
import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from deploy.cli import main
from pipelines.options import BeamOptionsError, beam_options
from pipelines.run import PipelineRunError, Plan, plan_cycle, slices
from pipelines.settings import PIPELINES, PipelineSettings, PipelineSettingsError
from sensors.checkpoint import Checkpoint, CheckpointError
from sensors.registry import Registry
from sensors.spool import READINGS, SegmentInfo
from tests.pipelines.spooldata import HOUR, MINUTE, T0, reading, write_segment


def test_default_runner_is_the_local_fn_api_runner_and_direct_runner_never_reaches_prism() -> None:
    assert beam_options([]).view_as(StandardOptions).runner == "FnApiRunner"
    assert beam_options(["--runner=DirectRunner"]).view_as(StandardOptions).runner == "FnApiRunner"
    assert beam_options(["--runner", "DirectRunner"], streaming=True).view_as(StandardOptions).runner == (
        "BundleBasedDirectRunner"
    )
    options = beam_options(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])
    assert options.view_as(StandardOptions).runner == "PortableRunner"
    assert beam_options(["--direct_running_mode=multi_processing"]).view_as(DirectOptions).direct_num_workers == 1


def test_multi_threading_and_unknown_flags_are_refused_with_one_line() -> None:
    with pytest.raises(BeamOptionsError, match="multi_threading loses data"):
        beam_options(["--direct_running_mode=multi_threading"])
    with pytest.raises(BeamOptionsError, match="unknown Beam option --runer"):
        beam_options(["--runer=FnApiRunner"])


def test_a_range_is_widened_to_whole_hours_and_reads_the_aqi_look_back() -> None:
    plan = Plan.bounded(PIPELINES, T0 + 30 * MINUTE, T0 + 2 * HOUR + 1)
    assert (plan.start_ms, plan.end_ms) == (T0, T0 + 3 * HOUR)
    assert plan.read_range == (T0 - 23 * HOUR, T0 + 3 * HOUR)
    assert Plan.bounded(["rollup"], T0, T0 + HOUR).read_range == (T0, T0 + HOUR)
    assert Plan.bounded(["anomalies"], T0, T0 + HOUR).read_range == (T0 - 15 * MINUTE, T0 + HOUR)
    with pytest.raises(PipelineRunError, match="--to must be after --from"):
        Plan.bounded(["rollup"], T0 + HOUR, T0)
    with pytest.raises(PipelineRunError, match="unknown pipeline 'rolup'"):
        Plan.bounded(["rolup"], T0, T0 + HOUR)


def segment(seq: int, first: int, last: int, count: int = 100) -> SegmentInfo:
    return SegmentInfo("ingest-1", READINGS, seq, count, 1, first, last, last, {"air_quality": count})


def test_a_follow_cycle_covers_the_hours_its_segments_touch() -> None:
    plan, late = plan_cycle([segment(1, T0 + 10 * MINUTE, T0 + 70 * MINUTE)], Checkpoint(), T0 + 2 * HOUR, 86_400_000)
    assert plan == Plan(PIPELINES, T0, T0 + 2 * HOUR, T0 + 2 * HOUR) and late == 0
    # Nothing new, no hour ended: nothing to do.
    done = Checkpoint({"ingest-1": 1}, watermark_ms=T0 + 70 * MINUTE, hours_done_ms=T0 + 2 * HOUR)
    assert plan_cycle([], done, T0 + 2 * HOUR + 5 * MINUTE, 86_400_000) == (None, 0)
    # An hour ended without any data: its health (all silent) is written.
    plan, _ = plan_cycle([], done, T0 + 3 * HOUR + 5 * MINUTE, 86_400_000)
    assert plan == Plan(("health",), T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 3 * HOUR)


def test_readings_later_than_the_allowed_lateness_do_not_reopen_closed_windows() -> None:
    checkpoint = Checkpoint({"ingest-1": 4}, watermark_ms=T0 + 30 * HOUR, hours_done_ms=T0 + 30 * HOUR)
    late = segment(5, T0 + HOUR, T0 + 2 * HOUR, count=50)  # a day and more behind the watermark
    fresh = segment(6, T0 + 29 * HOUR, T0 + 30 * HOUR + 5 * MINUTE)
    plan, too_late = plan_cycle([late, fresh], checkpoint, T0 + 30 * HOUR + 6 * MINUTE, 3_600_000)
    assert too_late == 50
    assert plan is not None and (plan.start_ms, plan.end_ms) == (T0 + 29 * HOUR, T0 + 31 * HOUR)
    # Within the lateness (two days here), the late hours are re-aggregated.
    plan, too_late = plan_cycle([late, fresh], checkpoint, T0 + 30 * HOUR + 6 * MINUTE, 2 * 86_400_000)
    assert too_late == 0 and plan is not None and plan.start_ms == T0 + HOUR


def test_checkpoint_survives_a_restart_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / "pipelines" / "checkpoint.json"
    assert Checkpoint.load(path) == Checkpoint()
    checkpoint = Checkpoint()
    checkpoint.mark_done([segment(3, T0, T0 + HOUR), segment(1, T0, T0 + 2 * HOUR)])
    checkpoint.hours_done_ms = T0
    checkpoint.save(path)
    again = Checkpoint.load(path)
    assert again == Checkpoint({"ingest-1": 3}, watermark_ms=T0 + 2 * HOUR, hours_done_ms=T0)
    assert again.is_done(segment(2, T0, T0)) and not again.is_done(segment(4, T0, T0))
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checkpoint\.json: cannot read"):
        Checkpoint.load(path)


def test_settings_name_the_variable_they_reject() -> None:
    env = {"SMARTCITY_HOME": "/srv/city", "SMARTCITY_INGEST_SPOOL_DIR": "/data/spool"}
    settings = PipelineSettings.from_env(env)
    assert settings.spool_root == Path("/data/spool") and settings.cache_dir == Path("/srv/city/pipelines/columns")
    lateness = re.escape("SMARTCITY_PIPELINE_ALLOWED_LATENESS_S ([pipeline] allowed_lateness_s): must be an integer")
    with pytest.raises(PipelineSettingsError, match=lateness):
        PipelineSettings.from_env({"SMARTCITY_PIPELINE_ALLOWED_LATENESS_S": "a day"})
    cache = re.escape("SMARTCITY_PIPELINE_COLUMN_CACHE ([pipeline] column_cache): must be true or false")
    with pytest.raises(PipelineSettingsError, match=cache):
        PipelineSettings.from_env({"SMARTCITY_PIPELINE_COLUMN_CACHE": "maybe"})


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["pipeline", "rollup", "--from", "yesterday"], 2, "is not a time like"),
        (["pipeline", "rollup", "--runer=PortableRunner"], 2, "No such option: --runer (nor a Beam option)"),
        (["pipeline", "rollup", "FnApiRunner"], 2, "unexpected argument 'FnApiRunner'"),
        (["pipeline", "run", "--follow", "--from", "2025-11-25"], 2, "--follow takes no --from/--to"),
        (
            ["pipeline", "aqi", "--from", "2025-11-25", "--to", "2025-11-26", "--direct_running_mode=multi_threading"],
            1,
            "multi_threading loses data",
        ),
        (["pipeline", "health", "--from", "2025-11-26", "--to", "2025-11-25"], 1, "--to must be after --from"),
        (["pipeline", "rollup"], 1, "no closed spool segments in"),
    ],
)
def test_command_line_errors_are_one_line_with_the_right_exit_code(
    argv: list[str],
    code: int,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMARTCITY_HOME", str(tmp_path))
    monkeypatch.setenv("SMARTCITY_INFLUX_URL", "http://127.0.0.1:9")  # never reached: the error comes first
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_long_ranges_run_a_day_at_a_time_with_the_same_hours() -> None:
    plan = Plan(PIPELINES, T0, T0 + 50 * HOUR, T0 + 60 * HOUR)
    parts = slices(plan)
    assert [(p.start_ms, p.end_ms, p.aqi_end_ms) for p in parts] == [
        (T0, T0 + 24 * HOUR, T0 + 24 * HOUR),
        (T0 + 24 * HOUR, T0 + 50 * HOUR, T0 + 60 * HOUR),  # the AQI hours after the range stay with the last
    ]
    assert all(p.pipelines == PIPELINES for p in parts)
    # A tail of at most half a day joins the slice before it (no second read of a day of AQI look-back).
    assert [(p.start_ms, p.end_ms) for p in slices(Plan(PIPELINES, T0, T0 + 25 * HOUR, T0 + 25 * HOUR))] == [
        (T0, T0 + 25 * HOUR)
    ]
    assert len(slices(Plan(PIPELINES, T0, T0 + 37 * HOUR, T0 + 37 * HOUR))) == 2


def test_an_unreachable_influxdb_fails_the_run_with_one_line(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_segment(tmp_path / "spool", 1, [reading(registry.sensors["pkt-aq-001"], T0, {"pm25": 10.0})])
    monkeypatch.setenv("SMARTCITY_HOME", str(tmp_path))
    monkeypatch.setenv("SMARTCITY_INFLUX_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("SMARTCITY_INFLUX_MAX_RETRIES", "0")
    assert main(["pipeline", "rollup"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "rp=rollup failed" in err.strip().splitlines()[-1]


def test_the_aqi_hours_state_round_trips_and_a_damaged_file_means_reading_the_look_back(tmp_path: Path) -> None:
    from pipelines.areas import Area
    from pipelines.incremental import AqiHours
    from pipelines.thai_aqi import POLLUTANT_NAMES, Means

    row = Area("district", "kathu", "andaman", "phuket", "kathu")
    means = np.full((1, len(POLLUTANT_NAMES)), np.nan)
    means[0, 0] = 12.5
    state = AqiHours()
    state.update([Means(T0 + HOUR, (row,), means, pane=2), Means(T0, (row,), means)], T0, keep_from_ms=T0)
    path = tmp_path / "aqi_hours.npz"
    state.save(path)
    again = AqiHours.load(path)
    assert again.since_ms == T0 and again.covers(T0) and not again.covers(T0 - HOUR)
    assert [m.hour_ms for m in again.prior(T0, T0 + 2 * HOUR, skip=(T0, T0 + HOUR))] == [T0 + HOUR]
    assert again.hours[T0].rows == (row,) and np.array_equal(again.hours[T0].means, means, equal_nan=True)
    path.write_bytes(b"not numpy")
    assert AqiHours.load(path) == AqiHours() and not AqiHours().covers(T0)


def test_run_builds_every_pipeline_of_the_catalog_and_each_has_a_command(tmp_path: Path) -> None:
    """The catalog is the one list: `run` builds exactly its pipelines and each has its command and help."""
    import apache_beam as beam

    from deploy.cli import app
    from pipelines.run import build
    from pipelines.settings import CATALOG
    from sensors.registry import default_registry

    with beam.Pipeline() as pipeline:
        outputs = build(pipeline, Plan(PIPELINES, T0, T0 + HOUR, T0 + HOUR), PipelineSettings(home=tmp_path),
                        default_registry())  # fmt: skip
        assert tuple(outputs) == PIPELINES == tuple(spec.name for spec in CATALOG)
    group = app.get_command(click.Context(app), "pipeline")
    assert isinstance(group, click.Group)
    for spec in CATALOG:
        command = group.get_command(click.Context(group), spec.name)
        assert command is not None and command.help is not None and command.help.startswith(spec.help)
