"""The private names of paho-mqtt and Apache Beam that smartcity relies on, checked on the pinned versions.

ingest/fastpaho.py (`FastClient`) overrides paho's packet read and PUBLISH handling for speed, and
pipelines/options.py builds Beam's options with Beam's own argument parser. Neither is public API,
so pyproject.toml pins both exactly; when an upgrade moves one of these names this test says which.
Without them the product still runs, slower or less checked: the fallbacks are tested here too.
"""

from __future__ import annotations

import types

import paho.mqtt.client as mqtt
import pytest
from apache_beam.options import pipeline_options
from apache_beam.options.pipeline_options import StandardOptions

from ingest import fastpaho


def test_paho_has_every_internal_the_fast_client_overrides() -> None:
    """The list `make_client` checks (ingest.fastpaho.PAHO_METHODS, PAHO_ATTRIBUTES) on the pinned paho."""
    assert fastpaho.missing_internals() == ()
    assert mqtt.MQTTMessage()._topic == b""  # the consumer reads the raw topic bytes


def test_without_them_ingest_falls_back_to_pahos_own_client(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As on a paho whose `_sock_recv` took other parameters: a warning naming it, and paho's own client."""
    with monkeypatch.context() as patched:
        patched.setattr(mqtt.Client, "_sock_recv", lambda self, size, flags: b"")
        fastpaho.missing_internals.cache_clear()
        try:
            client = fastpaho.make_client(True, "probe")
        finally:
            fastpaho.missing_internals.cache_clear()
    assert type(client) is fastpaho.IngestClient
    assert "lacks _sock_recv" in caplog.text
    assert type(fastpaho.make_client(True, "probe")) is fastpaho.FastClient  # the real paho again
    assert type(fastpaho.make_client(False, "probe")) is fastpaho.IngestClient


def test_beam_argument_parser() -> None:
    parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
    pipeline_options.StandardOptions._add_argparse_args(parser)
    assert parser.parse_known_args(["--runner=DirectRunner", "--other"])[0].runner == "DirectRunner"


def test_without_it_beam_options_go_unchecked_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines import options
    from pipelines.options import beam_options, unknown_args

    assert unknown_args(["--runer=DirectRunner"]) == ["--runer"]  # the pinned Beam: a typo is caught
    monkeypatch.setattr(options, "pipeline_options", types.SimpleNamespace())  # a Beam without the parser
    assert unknown_args(["--runer=DirectRunner"]) == []
    assert "not checked" in caplog.text
    assert beam_options(["--direct_num_workers=1"]).view_as(StandardOptions).runner == "FnApiRunner"
