"""Settings of the ingest service, read from `SMARTCITY_*` variables (smartcity.toml feeds them).

`sample.toml` next to this module is the reference: it documents every key
with its default, the README copies it, and `CONFIG_KEYS` (what `smartcity
config show` lists) is parsed from it. The dataclass defaults below must equal
the sample's; a test checks both ways.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sensors.broker_url import BrokerAddress, BrokerUrlError
from sensors.home import Home
from sensors.settings import SettingError, check_ranges, env_name, read_env, sample_keys, where
from sensors.topics import SUBSCRIPTION, TOPIC_PREFIX

SAMPLE_PATH = Path(__file__).with_name("sample.toml")

Role = Literal["all", "consume", "write"]
ROLES: tuple[Role, ...] = ("all", "consume", "write")

# The client id names a folder and an MQTT session: keep it to portable characters.
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHARE_GROUP_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_FLUSH_INTERVAL_MS = 50


class SettingsError(SettingError):
    """An ingest or MQTT setting that cannot be used; the message names its variable and smartcity.toml key."""


@dataclass(frozen=True)
class MqttSettings:
    """The broker connection: `SMARTCITY_MQTT_URL` (user and password in it) and a TLS CA bundle.

    Parsed by `sensors.broker_url`, the one parser every smartcity MQTT client uses.
    """

    url: str = field(default="mqtt://127.0.0.1:1883", repr=False)
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        self.address  # noqa: B018 (validates)

    @property
    def address(self) -> BrokerAddress:
        try:
            return BrokerAddress.from_url(
                self.url, self.ca_file, where=where("SMARTCITY_MQTT_URL"), ca_where=where("SMARTCITY_MQTT_CA_FILE")
            )
        except BrokerUrlError as err:
            raise SettingsError(str(err)) from None

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def tls(self) -> bool:
        return self.address.tls

    @property
    def username(self) -> str | None:
        return self.address.username

    @property
    def password(self) -> str | None:
        return self.address.password

    @property
    def display(self) -> str:
        """The URL without the password, for logs."""
        return self.address.display


# Allowed ranges of the numeric [ingest] keys (inclusive).
_RANGES: dict[str, tuple[float, float]] = {
    "session_expiry_s": (0, 2**32 - 1),
    "receive_maximum": (1, 65_535),
    "keepalive_s": (5, 65_535),
    "reconnect_min_delay_s": (1, 3600),
    "reconnect_max_delay_s": (1, 3600),
    "flush_interval_ms": (1, MAX_FLUSH_INTERVAL_MS),
    "flush_max_kib": (1, 1024 * 1024),
    "segment_max_mib": (0.001, 4096),
    "segment_max_age_s": (0.1, 86_400),
    "spool_max_mib": (0, 2**40),
    "min_free_disk_mib": (0, 2**40),
    "spool_retention_h": (0, 100 * 365 * 24),
    "accept_max_age_h": (1, 100 * 365 * 24),
    "history_max_mib": (0, 2**40),
    "reject_store_per_s": (0, 1_000_000),
    "reject_store_max_mib": (0, 2**40),
    "reject_retention_h": (0, 100 * 365 * 24),
    "write_batch_points": (1, 1_000_000),
    "write_poll_interval_ms": (1, 10_000),
    "write_retry_max_delay_s": (0.1, 3600),
    "metrics_interval_s": (0.1, 3600),
    "shutdown_timeout_s": (0.5, 300),
}


@dataclass(frozen=True)
class IngestSettings:
    """Everything `smartcity ingest` needs but the InfluxDB connection (that is `storage`'s)."""

    role: Role = "all"
    client_id: str = "smartcity-ingest"
    topics: tuple[str, ...] = (SUBSCRIPTION,)
    share_group: str = ""
    session_expiry_s: int = 14 * 24 * 3600
    receive_maximum: int = 5000
    keepalive_s: int = 30
    fast_client: bool = True
    reconnect_min_delay_s: int = 1
    reconnect_max_delay_s: int = 30
    spool_dir: Path | None = None
    flush_interval_ms: int = 10
    flush_max_kib: int = 1024
    segment_max_mib: float = 64
    segment_max_age_s: float = 15
    spool_max_mib: float = 0
    min_free_disk_mib: float = 1024
    spool_retention_h: float = 0
    accept_max_age_h: float = 72
    history_max_mib: float = 1024
    reject_store_per_s: float = 100
    reject_store_max_mib: float = 64
    reject_retention_h: float = 168
    write_batch_points: int = 5000
    write_poll_interval_ms: int = 50
    write_retry_max_delay_s: float = 30
    metrics_interval_s: float = 10
    shutdown_timeout_s: float = 8
    home: Path = Path(".smartcity")
    mqtt: MqttSettings = field(default_factory=MqttSettings)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SettingsError(f"{env_of('role')}: must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not CLIENT_ID_PATTERN.match(self.client_id):
            raise SettingsError(
                f"{env_of('client_id')}: {self.client_id!r} is not a usable client id "
                "(letters, digits, '.', '_', '-'; 1-64 characters)"
            )
        if not self.topics:
            raise SettingsError(f"{env_of('topics')}: give at least one topic filter")
        for topic in self.topics:
            _check_filter(topic)
        if self.share_group and not SHARE_GROUP_PATTERN.match(self.share_group):
            raise SettingsError(
                f"{env_of('share_group')}: {self.share_group!r} is not a usable group name (letters, digits, '_', '-')"
            )
        check_ranges(self, "ingest", _RANGES, SettingsError)
        if 0 < self.spool_retention_h < self.accept_max_age_h:
            # The conflict index is rebuilt from the spool: it must still hold the acceptance window.
            raise SettingsError(
                f"{env_of('spool_retention_h')}: {self.spool_retention_h:g} h is shorter than accept_max_age_h "
                f"({self.accept_max_age_h:g} h); keep the spool at least as long as readings are accepted"
            )
        if self.reconnect_min_delay_s > self.reconnect_max_delay_s:
            raise SettingsError(
                f"{env_of('reconnect_min_delay_s')}: {self.reconnect_min_delay_s} is above "
                f"reconnect_max_delay_s ({self.reconnect_max_delay_s})"
            )

    # -- derived values in the units the code uses ------------------------------------------

    @property
    def spool_root(self) -> Path:
        return Home(self.home, self.spool_dir).spool

    @property
    def stream_dir(self) -> Path:
        return self.spool_root / self.client_id

    @property
    def subscriptions(self) -> list[str]:
        """The filters as subscribed: plain, or within the shared subscription group."""
        if self.share_group:
            return [f"$share/{self.share_group}/{topic}" for topic in self.topics]
        return list(self.topics)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> IngestSettings:
        """Settings from `SMARTCITY_*` variables (defaults for the rest); `overrides` win (command-line options)."""
        environ = os.environ if environ is None else environ
        values = read_env(cls, "ingest", environ, skip=("mqtt", "home"), error=SettingsError)
        if environ.get("SMARTCITY_HOME"):
            values["home"] = Path(environ["SMARTCITY_HOME"])
        ca_file = environ.get("SMARTCITY_MQTT_CA_FILE")
        values["mqtt"] = MqttSettings(
            url=environ.get("SMARTCITY_MQTT_URL") or MqttSettings.url, ca_file=Path(ca_file) if ca_file else None
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def env_var(name: str) -> str:
    """The variable of an [ingest] key."""
    return env_name("ingest", name)


def env_of(name: str) -> str:
    """`SMARTCITY_INGEST_NAME ([ingest] name)`: how a message names an [ingest] key."""
    return where(env_var(name))


def _check_filter(topic: str) -> None:
    """A topic filter inside the reading tree, with '+' and '#' used as MQTT allows."""
    where = env_of("topics")
    if topic.startswith("$share/"):
        raise SettingsError(f"{where}: give the plain filter and set share_group instead of {topic!r}")
    if not (topic.startswith(TOPIC_PREFIX) or topic == TOPIC_PREFIX.rstrip("/") + "/#"):
        raise SettingsError(f"{where}: {topic!r} is outside the reading topics {SUBSCRIPTION}")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            raise SettingsError(f"{where}: {topic!r} is not a valid MQTT topic filter")


CONFIG_KEYS = sample_keys(SAMPLE_PATH)
