"""The shared state folder layout and the one atomic-file helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.settings import IngestSettings
from pipelines.settings import PipelineSettings
from sensors.files import write_json_atomic
from sensors.home import Home


def test_every_component_finds_the_same_configured_spool(tmp_path: Path) -> None:
    """A configured [ingest] spool_dir is where ingest writes, the pipelines read and the audit looks."""
    env = {"SMARTCITY_HOME": str(tmp_path / "home"), "SMARTCITY_INGEST_SPOOL_DIR": str(tmp_path / "disk2")}
    assert Home.from_env(environ=env).spool == tmp_path / "disk2"
    assert IngestSettings.from_env(env).spool_root == tmp_path / "disk2"
    assert PipelineSettings.from_env(env).spool_root == tmp_path / "disk2"
    assert Home.from_env(environ={"SMARTCITY_HOME": str(tmp_path)}).spool == tmp_path / "spool"
    assert PipelineSettings.from_env(env).checkpoint_path == Home(tmp_path / "home").checkpoint


def test_atomic_json_replaces_whole_private_files(tmp_path: Path) -> None:
    path = tmp_path / "state" / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [1]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1]}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp file left behind


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_truncated_checkpoint_is_named_not_read_as_empty(tmp_path: Path) -> None:
    """Cut by a full disk or a copy: ingest must not read it as 'nothing processed' (and then keep or delete
    the wrong segments), and the pipelines must not start over silently; both get an error naming the file."""
    from sensors.checkpoint import Checkpoint, CheckpointError

    path = tmp_path / "checkpoint.json"
    Checkpoint(streams={"ingest-1": 42}, watermark_ms=1, hours_done_ms=1).save(path)
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(CheckpointError, match=str(path)):
        Checkpoint.load(path)
