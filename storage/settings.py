"""Connection, retention, batching and retry settings of the storage layer.

Every field can be set as `[influx] <field>` in smartcity.toml or from the
environment as `SMARTCITY_INFLUX_<FIELD>`, e.g. `SMARTCITY_INFLUX_BATCH_SIZE=5000`;
`sample.toml` next to this module documents each (read with `sensors.settings`,
like every package's settings). The connection variables of DESIGN.md:

    SMARTCITY_INFLUX_URL    http://admin:PASSWORD@127.0.0.1:8086 (1.x: credentials in the URL)
    SMARTCITY_INFLUX_TOKEN  with SMARTCITY_INFLUX_ORG: use the 2.x/3.x write API (bucket "{db}/{rp}")
    SMARTCITY_INFLUX_ORG
    SMARTCITY_INFLUX_DB     default "smartcity"

Validation errors name the variable (and the key), e.g.
`SMARTCITY_INFLUX_BATCH_SIZE ([influx] batch_size): must be between 1 and 1e+06, got 0`.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sensors.settings import SettingError, check_ranges, read_env, sample_keys, where

ENV_PREFIX = "SMARTCITY_INFLUX_"
SAMPLE_PATH = Path(__file__).with_name("sample.toml")
DEFAULT_URL = "http://127.0.0.1:8086"
DEFAULT_DB = "smartcity"
RAW_RP = "raw"
ROLLUP_RP = "rollup"
RAW_RETENTION = "30d"
ROLLUP_RETENTION = "730d"

# An InfluxQL duration literal, e.g. 30d, 104w, 720h; INF keeps data forever.
_DURATION = re.compile(r"^(?:[1-9][0-9]*(?:ns|u|µ|ms|s|m|h|d|w))+$|^INF$")
_DURATION_NS = {
    "ns": 1,
    "u": 10**3,
    "µ": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
    "w": 7 * 86400 * 10**9,
}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class InfluxSettingsError(SettingError):
    """A storage setting is missing or invalid; the message names the variable."""


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def duration_ns(text: str) -> int:
    """Nanoseconds of an InfluxQL duration literal (`30d`, `1h30m`); 0 for `INF`."""
    if text == "INF":
        return 0
    total = 0
    for number, unit in re.findall(r"([0-9]+)(ns|u|µ|ms|s|m|h|d|w)", text):
        total += int(number) * _DURATION_NS[unit]
    return total


# Allowed ranges of the numeric keys (inclusive).
_RANGES: dict[str, tuple[float, float]] = {
    "batch_size": (1, 1_000_000),
    "max_pending_batches": (1, 10_000),
    "max_retries": (0, 1_000),
    "timeout_s": (0.01, 3600),
    "retry_initial_delay_s": (0.0, 3600),
    "retry_backoff_base": (1.0, 100),
    "retry_max_delay_s": (0.0, 3600),
    "retry_jitter": (0.0, 1.0),
    "retry_max_total_s": (0.0, 86_400),
}


@dataclass(frozen=True, kw_only=True)
class InfluxSettings:
    """Where and how the storage layer writes. Times are seconds (`_s`), sizes are points."""

    # Base URL without credentials (`from_env` moves URL credentials to username/password).
    url: str = DEFAULT_URL
    # InfluxDB 1.x user and password (HTTP basic auth); empty when auth is off.
    username: str = ""
    password: str = field(default="", repr=False)
    # InfluxDB 2.x/3.x API token and organisation; a token selects the 2.x write path.
    token: str = field(default="", repr=False)
    org: str = ""
    # Database; on 2.x the buckets are "{db}/{rp}".
    db: str = DEFAULT_DB
    # Retention policies: raw readings (the default RP) and rollups.
    raw_rp: str = RAW_RP
    raw_retention: str = RAW_RETENTION
    rollup_rp: str = ROLLUP_RP
    rollup_retention: str = ROLLUP_RETENTION
    # Points per HTTP request.
    batch_size: int = 5_000
    # Encoded batches that may wait for a writer's sender (the pipelines' sink: per writer thread).
    max_pending_batches: int = 4
    # Per HTTP request (connect and each read).
    timeout_s: float = 10.0
    # Compress request bodies: True, False, or None for "auto": on, except to a loopback address
    # (there it only costs CPU on both ends: 1M points on 2 cores took 1.6x as long with gzip).
    gzip: bool | None = None
    # Retries of a batch on 5xx, 429, timeouts and connection errors (never on other 4xx).
    max_retries: int = 8
    retry_initial_delay_s: float = 0.2
    retry_backoff_base: float = 2.0
    retry_max_delay_s: float = 10.0
    # Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    retry_jitter: float = 0.2
    # A batch is given up (StorageWriteError) once retrying it has taken this long.
    retry_max_total_s: float = 60.0

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            self._fail("url", f"must be http(s)://[user:password@]host:port, got {self.url!r}")
        if parsed.username is not None or parsed.password is not None:
            self._fail("url", "credentials belong in username/password (InfluxSettings.from_env moves them)")
        if parsed.query or parsed.fragment:
            self._fail("url", f"must not have a query or fragment, got {self.url!r}")
        try:
            parsed.port  # noqa: B018 - raises on a bad port
        except ValueError:
            self._fail("url", f"has an invalid port: {self.url!r}")
        if bool(self.token) != bool(self.org):
            missing = "org" if self.token else "token"
            self._fail(missing, "is required with " + env_name("token" if missing == "org" else "org"))
        if self.token and (self.username or self.password):
            self._fail("url", "give either user:password in the URL (1.x) or a token (2.x/3.x), not both")
        if self.password and not self.username:
            self._fail("url", "has a password but no user")
        for name in ("db", "raw_rp", "rollup_rp"):
            value = getattr(self, name)
            if not _NAME.match(value):
                self._fail(name, f"must be 1-128 letters, digits, '_', '.', '-', got {value!r}")
        if self.raw_rp == self.rollup_rp:
            self._fail("rollup_rp", f"must differ from {env_name('raw_rp')} ({self.raw_rp!r})")
        for name in ("raw_retention", "rollup_retention"):
            value = getattr(self, name)
            if not _DURATION.match(value):
                self._fail(name, f"must be an InfluxQL duration like 30d, 104w or INF, got {value!r}")
            if value != "INF" and duration_ns(value) < 3600 * 10**9:
                self._fail(name, f"must be at least 1h (InfluxDB's minimum), got {value!r}")
        check_ranges(self, "influx", _RANGES, InfluxSettingsError)

    def _fail(self, name: str, message: str) -> None:
        raise InfluxSettingsError(f"{where(env_name(name))}: {message}")

    @property
    def use_gzip(self) -> bool:
        """Whether request bodies are compressed (`gzip`, with None meaning: unless the host is loopback)."""
        if self.gzip is not None:
            return self.gzip
        host = urllib.parse.urlsplit(self.url).hostname or ""
        return not (host == "localhost" or host.startswith("127.") or host == "::1")

    @property
    def api(self) -> Literal["v1", "v2"]:
        """`v2` (2.x/3.x write API, token auth) when a token is set, else `v1` (1.x `/write`)."""
        return "v2" if self.token else "v1"

    def bucket(self, rp: str) -> str:
        """The 2.x bucket of a retention policy: `{db}/{rp}`."""
        return f"{self.db}/{rp}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> InfluxSettings:
        """Settings from `SMARTCITY_INFLUX_*` variables (unset ones keep their defaults)."""
        env = os.environ if environ is None else environ
        # username and password are part of SMARTCITY_INFLUX_URL
        values = read_env(cls, "influx", env, skip=("username", "password"), error=InfluxSettingsError)
        if "url" in values:
            values["url"], values["username"], values["password"] = _split_credentials(values["url"])
        values.update(overrides)
        return cls(**values)


def _split_credentials(url: str) -> tuple[str, str, str]:
    parsed = urllib.parse.urlsplit(url)
    try:
        username = urllib.parse.unquote(parsed.username or "")
        password = urllib.parse.unquote(parsed.password or "")
        netloc = parsed.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parsed.port is not None:
            netloc += f":{parsed.port}"
    except ValueError as err:
        raise InfluxSettingsError(f"{where(env_name('url'))}: is not a valid URL: {err}") from None
    bare = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, parsed.query, parsed.fragment))
    return bare, username, password


CONFIG_KEYS = sample_keys(SAMPLE_PATH)
