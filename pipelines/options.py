"""Beam pipeline options: the flags a user passes through, the default runner, and the unsafe ones refused.

Everything on a `smartcity pipeline` command line that is not one of its own
options goes to Beam as in Beam's examples (`parse_known_args` style):
`--runner`, `--direct_num_workers`, `--job_endpoint`, `--temp_location`, ...

Two measured pitfalls of Beam 2.77 shape the defaults (docs/pipelines.md):
- `DirectRunner` first tries the Prism runner, which downloads a binary from
  GitHub on every run; offline that costs a failed connection each time, and
  on a network that hangs instead of failing it could stall. So the default
  runner is named directly (`FnApiRunner`, in-memory) and `DirectRunner` is
  mapped to it; `BundleBasedDirectRunner` serves streaming tests.
- `--direct_running_mode=multi_threading` loses elements without an error
  (about 0.2-0.5 % at a million readings, in any GroupByKey after a
  non-deterministic key); it is refused. `in_memory` (the default) and
  `multi_processing` are exact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from apache_beam.options import pipeline_options
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from sensors.errors import SmartcityError

logger = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"
# Names that would reach the SwitchingDirectRunner and its Prism attempt.
_DIRECT_NAMES = frozenset({"DirectRunner", "SwitchingDirectRunner", "direct", "directrunner"})


class BeamOptionsError(SmartcityError):
    """A Beam option that cannot be used; the message names it."""


def beam_options(flags: Sequence[str], *, streaming: bool = False) -> PipelineOptions:
    """PipelineOptions from pass-through flags, with the safe default runner and unsafe modes refused."""
    flags = list(flags)
    unknown = unknown_args(flags)
    if unknown:
        raise BeamOptionsError(f"unknown Beam option {unknown[0]} (options after the command's own go to Beam)")
    options = PipelineOptions(flags)
    standard = options.view_as(StandardOptions)
    if streaming:
        standard.streaming = True
    if standard.runner is None or standard.runner in _DIRECT_NAMES:
        if standard.runner is not None:
            logger.info(
                "running %s as %s: DirectRunner would try to download Prism first",
                standard.runner,
                _local_runner(streaming),
            )
        standard.runner = _local_runner(streaming)
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading":
        raise BeamOptionsError(
            "--direct_running_mode=multi_threading loses data silently in Beam 2.77; "
            "use in_memory (the default) or multi_processing"
        )
    return options


def _local_runner(streaming: bool) -> str:
    return "BundleBasedDirectRunner" if streaming else DEFAULT_RUNNER


def unknown_args(flags: Sequence[str]) -> list[str]:
    """Arguments no Beam option takes: unknown flags (without their `=value`) and stray words.

    Beam itself drops them with a log line, so a typo like `--runer` would silently run the default.
    The check uses Beam's own (private) argument parser, as `PipelineOptions` does; on a Beam without
    it (apache-beam is pinned exactly, tests/test_private_apis.py) flags go unchecked, with a warning.
    """
    try:
        parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
        for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
            cls._add_argparse_args(parser)
    except (AttributeError, TypeError) as err:
        logger.warning("Beam options are not checked for typos on this apache-beam (%s)", err)
        return []
    _, unknown = parser.parse_known_args(list(flags))
    return [arg.split("=", 1)[0] if arg.startswith("-") else arg for arg in unknown]
