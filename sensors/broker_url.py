"""The broker address every smartcity MQTT client reads: `SMARTCITY_MQTT_URL` and `SMARTCITY_MQTT_CA_FILE`.

    mqtt://USER:PASSWORD@HOST:PORT     plain MQTT (port 1883 unless given)
    mqtts://USER:PASSWORD@HOST:PORT    MQTT over TLS (port 8883 unless given); the broker's
                                       certificate is verified against the CA file, or the
                                       system's CAs without one, and must name HOST

User and password are percent-decoded (`p%40ss` is `p@ss`). Ingest, the simulator and
`smartcity stack status` parse the URL here and set up TLS with `apply_tls`, so they
accept the same URLs and verify the broker the same way.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sensors.errors import SmartcityError

if TYPE_CHECKING:  # only the consumer needs paho; settings parse URLs in processes that do not (the raw writer)
    import paho.mqtt.client as mqtt

MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerUrlError(SmartcityError):
    """A broker URL or CA file that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        ca_file: Path | None = None,
        where: str = "SMARTCITY_MQTT_URL",
        ca_where: str = "SMARTCITY_MQTT_CA_FILE",
    ) -> BrokerAddress:
        """Parse `url`; errors start with `where` (or `ca_where`) and never show the password."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as err:
            raise BrokerUrlError(f"{where}: not a URL: {err} ({masked(url)!r})") from None
        if parts.scheme not in MQTT_PORTS:
            raise BrokerUrlError(f"{where}: scheme must be mqtt:// or mqtts://, got {parts.scheme or 'none'!r}")
        if not parts.hostname:
            raise BrokerUrlError(f"{where}: no host in {masked(url)!r}")
        if parts.path not in ("", "/"):
            raise BrokerUrlError(f"{where}: unexpected path {parts.path!r}; expected mqtt://user:password@host:port")
        if ca_file is not None and not ca_file.is_file():
            raise BrokerUrlError(f"{ca_where}: no such file {ca_file}")
        return cls(
            host=parts.hostname,
            port=port or MQTT_PORTS[parts.scheme],
            tls=parts.scheme == "mqtts",
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
            ca_file=ca_file,
        )

    @property
    def display(self) -> str:
        """The URL without the password, for logs."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def apply_tls(self, client: mqtt.Client) -> None:
        """For mqtts://: require a broker certificate signed by the CA file (or a system CA) naming the host."""
        if self.tls:
            client.tls_set(ca_certs=str(self.ca_file) if self.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)


def masked(url: str) -> str:
    """`url` with its credentials replaced by ***."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url
