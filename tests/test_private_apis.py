"""The private names of paho-mqtt and Apache Beam that smartcity relies on, checked on the pinned versions.

ingest/fastpaho.py (`FastClient`) overrides paho's packet read and PUBLISH handling for speed, and
pipelines/options.py builds Beam's options with Beam's own argument parser. Neither is public API,
so pyproject.toml pins both exactly; when an upgrade moves one of these names this test says which.
"""

from __future__ import annotations

import inspect

import paho.mqtt.client as mqtt
from apache_beam.options import pipeline_options

# (name, its parameters after self) on paho.mqtt.client.Client; None: an attribute set in __init__.
PAHO_METHODS = {
    "_sock_recv": ["bufsize"],
    "_packet_read": [],
    "_loop_rc_handle": ["rc"],
    "_handle_publish": [],
    "_packet_queue": ["command", "packet", "mid", "qos", "info"],
}
PAHO_ATTRIBUTES = ("_in_packet", "_protocol", "_userdata", "_in_callback_mutex", "_sock")


def test_paho_internals_the_fast_client_overrides() -> None:
    for name, parameters in PAHO_METHODS.items():
        method = getattr(mqtt.Client, name, None)
        assert callable(method), f"paho's Client has no {name} any more"
        assert list(inspect.signature(method).parameters)[1:] == parameters, name
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    for name in PAHO_ATTRIBUTES:
        assert hasattr(client, name), f"paho's Client has no {name} any more"
    assert isinstance(client._in_packet, dict) and {"command", "packet"} <= set(client._in_packet)
    assert mqtt.MQTTMessage()._topic == b""  # the consumer reads the raw topic bytes


def test_beam_argument_parser() -> None:
    parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
    pipeline_options.StandardOptions._add_argparse_args(parser)
    assert parser.parse_known_args(["--runner=DirectRunner", "--other"])[0].runner == "DirectRunner"
