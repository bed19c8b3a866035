"""The state folder every command shares (`--home`, `SMARTCITY_HOME`, default `.smartcity`): the one place
that knows where each thing lives in it.

    {home}/spool/                 ingest's spool, one stream folder per client id ([ingest] spool_dir moves it)
    {home}/secrets/               broker passwords (mqtt-users.json), TLS keys; 0700
    {home}/manifests/             what each `smartcity simulate` run published (for `smartcity audit`)
    {home}/pipelines/             the pipelines' state: checkpoint.json, aqi_hours.npz, columns/ (Parquet copies)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path(".smartcity")


@dataclass(frozen=True)
class Home:
    root: Path = DEFAULT_HOME
    # A spool kept elsewhere ([ingest] spool_dir, or [pipeline] spool_dir for a reader); None: {root}/spool.
    spool_dir: Path | None = None

    @classmethod
    def from_env(cls, root: Path | None = None, environ: Mapping[str, str] | None = None) -> Home:
        """`root` (a --home option) or SMARTCITY_HOME, with the spool where ingest's settings put it."""
        env = os.environ if environ is None else environ
        spool = env.get("SMARTCITY_INGEST_SPOOL_DIR", "").strip()
        return cls(root or Path(env.get("SMARTCITY_HOME") or DEFAULT_HOME), Path(spool) if spool else None)

    @property
    def spool(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.root / "spool"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def broker_passwords(self) -> Path:
        """The plain passwords of every broker account (written by `stack up`, `compose init`, `sensors acl`)."""
        return self.secrets / "mqtt-users.json"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def pipelines(self) -> Path:
        return self.root / "pipelines"

    @property
    def checkpoint(self) -> Path:
        """What `pipeline run --follow` has done; ingest reads it before deleting old segments."""
        return self.pipelines / "checkpoint.json"

    @property
    def aqi_hours(self) -> Path:
        """The AQI's hourly means kept between follow cycles (`pipelines.incremental.AqiHours`)."""
        return self.pipelines / "aqi_hours.npz"

    @property
    def columns(self) -> Path:
        return self.pipelines / "columns"
