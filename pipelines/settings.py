"""Settings of the pipelines, from `SMARTCITY_*` variables (smartcity.toml's `[pipeline]` section feeds them).

    SMARTCITY_HOME                         state folder (default .smartcity)
    SMARTCITY_PIPELINE_SPOOL_DIR           the spool to read; default SMARTCITY_INGEST_SPOOL_DIR, else {home}/spool
    SMARTCITY_PIPELINE_COLUMN_CACHE        keep a Parquet copy of each closed segment (default true)
    SMARTCITY_PIPELINE_ALLOWED_LATENESS_S  how late a reading may be and still update its windows (86400)
    SMARTCITY_PIPELINE_POLL_INTERVAL_S     `run --follow`: how often to look for closed segments (10)

State of the pipelines lives in `{home}/pipelines/`: `columns/` (the Parquet
copies), `checkpoint.json` (what `run --follow` has done) and `aqi_hours.npz`
(the AQI's hourly means kept between follow cycles).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sensors.errors import SmartcityError

# How long after a window's end a late reading still updates it (Beam's allowed lateness).
# A day: a gauge that lost its link for hours and then flushes its buffer is still counted.
ALLOWED_LATENESS_S = 24 * 3600

# The pipelines, in the order `run` applies them.
PIPELINES: tuple[str, ...] = ("rollup", "aqi", "health", "anomalies")

# (variable, default, help) of each setting, for `smartcity config show` and smartcity.toml validation.
CONFIG_KEYS: tuple[tuple[str, str, str], ...] = (
    ("SMARTCITY_PIPELINE_SPOOL_DIR", "", "Spool the pipelines read; empty: the ingest spool ({home}/spool)."),
    ("SMARTCITY_PIPELINE_COLUMN_CACHE", "true", "Keep a Parquet copy of each closed segment under {home}/pipelines."),
    ("SMARTCITY_PIPELINE_ALLOWED_LATENESS_S", str(ALLOWED_LATENESS_S), "How late a reading may still update windows."),
    ("SMARTCITY_PIPELINE_POLL_INTERVAL_S", "10", "run --follow: seconds between looks for closed segments."),
)


class PipelineSettingsError(SmartcityError):
    """A pipeline setting that cannot be used; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """Where the pipelines read and keep state, and how they treat late data. Times in seconds."""

    home: Path = Path(".smartcity")
    # None: the ingest spool.
    spool_dir: Path | None = None
    column_cache: bool = True
    allowed_lateness_s: int = ALLOWED_LATENESS_S
    poll_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.allowed_lateness_s <= 366 * 86400:
            self._fail("ALLOWED_LATENESS_S", f"must be 0 to 31622400 seconds, got {self.allowed_lateness_s}")
        if not 0.1 <= self.poll_interval_s <= 86400:
            self._fail("POLL_INTERVAL_S", f"must be 0.1 to 86400 seconds, got {self.poll_interval_s}")

    @staticmethod
    def _fail(name: str, message: str) -> None:
        raise PipelineSettingsError(f"SMARTCITY_PIPELINE_{name} {message}")

    @property
    def spool_root(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.home / "spool"

    @property
    def state_dir(self) -> Path:
        return self.home / "pipelines"

    @property
    def cache_dir(self) -> Path | None:
        return self.state_dir / "columns" if self.column_cache else None

    @property
    def checkpoint_path(self) -> Path:
        return self.state_dir / "checkpoint.json"

    @property
    def aqi_state_path(self) -> Path:
        """The AQI's hourly means kept between follow cycles (`pipelines.incremental.AqiHours`)."""
        return self.state_dir / "aqi_hours.npz"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> PipelineSettings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if env.get("SMARTCITY_HOME"):
            values["home"] = Path(env["SMARTCITY_HOME"])
        spool = env.get("SMARTCITY_PIPELINE_SPOOL_DIR") or env.get("SMARTCITY_INGEST_SPOOL_DIR")
        if spool:
            values["spool_dir"] = Path(spool)
        cache = env.get("SMARTCITY_PIPELINE_COLUMN_CACHE", "").strip().lower()
        if cache:
            if cache not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                cls._fail("COLUMN_CACHE", f"must be true or false, got {cache!r}")
            values["column_cache"] = cache in ("1", "true", "yes", "on")
        for name, convert in (("allowed_lateness_s", int), ("poll_interval_s", float)):
            raw = env.get(f"SMARTCITY_PIPELINE_{name.upper()}", "").strip()
            if raw:
                try:
                    values[name] = convert(raw)
                except ValueError:
                    cls._fail(name.upper(), f"must be a number, got {raw!r}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
