"""Is InfluxDB there, and does a write come back? Used by `smartcity stack status`.

`check()` pings the server, then writes one point and reads it back:

    _selftest,host=<hostname> nonce="<random hex>" <now, ns>     (retention policy: raw)

One series per host in a measurement of its own, expiring with the raw
retention, so the self-test never touches sensor data or dashboards.
"""

from __future__ import annotations

import dataclasses
import http.client
import secrets
import socket
import time
import urllib.parse
from dataclasses import dataclass

from storage.errors import StorageError
from storage.line_protocol import Point
from storage.query import QueryClient, ident
from storage.schema import SELFTEST_MEASUREMENT
from storage.settings import InfluxSettings
from storage.writer import make_writer


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    detail: str
    version: str = ""
    ping_s: float | None = None
    selftest_s: float | None = None


def ping(settings: InfluxSettings) -> tuple[str, float]:
    """`/ping`: the server version and the round trip in seconds; raises `StorageError`."""
    parsed = urllib.parse.urlsplit(settings.url)
    cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    conn = cls(
        parsed.hostname or "127.0.0.1",
        parsed.port or (443 if parsed.scheme == "https" else 80),
        timeout=settings.timeout_s,
    )
    started = time.monotonic()
    try:
        conn.request("GET", parsed.path.rstrip("/") + "/ping")
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as err:
        raise StorageError(f"InfluxDB at {settings.url} unreachable: {err}") from err
    finally:
        conn.close()
    if resp.status != 204:
        raise StorageError(f"InfluxDB at {settings.url} answered /ping with HTTP {resp.status}")
    return resp.getheader("X-Influxdb-Version") or "?", time.monotonic() - started


def self_test(settings: InfluxSettings) -> float:
    """Write one `_selftest` point into the raw RP and read it back; seconds taken, or `StorageError`."""
    host = socket.gethostname() or "unknown"
    nonce = secrets.token_hex(8)
    now_ns = time.time_ns()
    quick = dataclasses.replace(settings, max_retries=0, gzip=False)
    started = time.monotonic()
    with make_writer(quick, rp=settings.raw_rp) as writer:
        result = writer.write([Point(SELFTEST_MEASUREMENT, {"host": host}, {"nonce": nonce}, now_ns, "ns")])
    if result.dead_letters:
        raise StorageError(f"self-test point refused: {result.dead_letters[0].reason}")
    with QueryClient(quick) as client:
        series = client.query(
            "SELECT {field} FROM {m} WHERE {tag} = {host} AND time >= {t} AND time <= {t}",
            {
                "field": ident("nonce"),
                "m": ident(settings.raw_rp, SELFTEST_MEASUREMENT),
                "tag": ident("host"),
                "host": host,
                "t": now_ns,
            },
        )
    found = [row[1] for s in series for row in s.values]
    if found != [nonce]:
        raise StorageError(f"self-test point written but read back as {found!r}")
    return time.monotonic() - started


def check(settings: InfluxSettings) -> HealthReport:
    """Ping, then the write-and-read self-test; never raises."""
    try:
        version, ping_s = ping(settings)
    except StorageError as err:
        return HealthReport(False, str(err))
    try:
        selftest_s = self_test(settings)
    except StorageError as err:
        return HealthReport(False, f"InfluxDB {version} answers ping, but the self-test failed: {err}", version, ping_s)
    return HealthReport(
        True,
        f"InfluxDB {version}: ping {ping_s * 1000:.0f} ms, write+read self-test {selftest_s * 1000:.0f} ms "
        f"({settings.db}/{settings.raw_rp})",
        version,
        ping_s,
        selftest_s,
    )
