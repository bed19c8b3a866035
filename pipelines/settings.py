"""Settings of the pipelines: `[pipeline]` in smartcity.toml, or `SMARTCITY_PIPELINE_*` variables.

`sample.toml` next to this module documents every key (read with `sensors.settings`, like every
package's settings). The spool defaults to the ingest spool (`SMARTCITY_INGEST_SPOOL_DIR`, else
`{home}/spool`). State lives in `{home}/pipelines/`: `columns/` (the Parquet copies),
`checkpoint.json` (what `run --follow` has done) and `aqi_hours.npz` (the AQI's hourly means kept
between follow cycles).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sensors.home import Home
from sensors.settings import SettingError, check_ranges, read_env, sample_keys

SAMPLE_PATH = Path(__file__).with_name("sample.toml")

# How long after a window's end a late reading still updates it (Beam's allowed lateness).
# A day: a gauge that lost its link for hours and then flushes its buffer is still counted.
ALLOWED_LATENESS_S = 24 * 3600


@dataclass(frozen=True)
class PipelineSpec:
    """One pipeline: its command name and what it writes (its `smartcity pipeline NAME --help`)."""

    name: str
    help: str


# The catalog: every pipeline, in the order `run` applies them. `pipelines/run.py` builds each by name, and a
# test checks that it builds exactly these.
CATALOG: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        "rollup", "Write {kind}_1m and {kind}_1h rollups (mean/min/max/count, sum of amounts) at the levels read."
    ),
    PipelineSpec("aqi", "Write the hourly Thai AQI (aqi_1h) of every sensor and area."),
    PipelineSpec("health", "Write sensor_health_1h: received vs expected, completeness, flatline, outliers, seq gaps."),
    PipelineSpec(
        "anomalies", "Write anomalies: spikes (robust z-score) and rapid rises towards a site's danger level."
    ),
)
PIPELINES: tuple[str, ...] = tuple(spec.name for spec in CATALOG)

# (variable, default, help) of each setting, for `smartcity config show` and smartcity.toml validation.
CONFIG_KEYS = sample_keys(SAMPLE_PATH)


class PipelineSettingsError(SettingError):
    """A pipeline setting that cannot be used; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """Where the pipelines read and keep state, and how they treat late data. Times in seconds."""

    home: Path = Path(".smartcity")
    # None: the ingest spool.
    spool_dir: Path | None = None
    column_cache: bool = True
    allowed_lateness_s: int = ALLOWED_LATENESS_S
    poll_interval_s: float = 5.0

    def __post_init__(self) -> None:
        check_ranges(
            self,
            "pipeline",
            {"allowed_lateness_s": (0, 366 * 86400), "poll_interval_s": (0.1, 86400)},
            PipelineSettingsError,
        )

    @property
    def layout(self) -> Home:
        return Home(self.home, self.spool_dir)

    @property
    def spool_root(self) -> Path:
        return self.layout.spool

    @property
    def state_dir(self) -> Path:
        return self.layout.pipelines

    @property
    def cache_dir(self) -> Path | None:
        return self.layout.columns if self.column_cache else None

    @property
    def checkpoint_path(self) -> Path:
        return self.layout.checkpoint

    @property
    def aqi_state_path(self) -> Path:
        """The AQI's hourly means kept between follow cycles (`pipelines.incremental.AqiHours`)."""
        return self.layout.aqi_hours

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> PipelineSettings:
        env = os.environ if environ is None else environ
        values = read_env(cls, "pipeline", env, skip=("home",), error=PipelineSettingsError)
        if env.get("SMARTCITY_HOME"):
            values["home"] = Path(env["SMARTCITY_HOME"])
        if values.get("spool_dir") is None and env.get("SMARTCITY_INGEST_SPOOL_DIR"):
            values["spool_dir"] = Path(env["SMARTCITY_INGEST_SPOOL_DIR"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
