"""HTTP transports to InfluxDB: one request of line protocol, answered with a status, never retried here.

`V1Transport` posts to 1.x `/write?db=&rp=&precision=` over one keep-alive
connection (`http.client`, basic auth, gzip); `V2Transport` uses
influxdb-client's synchronous write API (bucket `{db}/{rp}`, token auth).
Network failures become `TransientError`; every HTTP answer becomes a
`Response`. `storage.writer.Writer` decides what to retry or bisect.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import socket
import urllib.parse
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from storage.line_protocol import Precision
from storage.settings import InfluxSettings

_V1_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


class TransientError(Exception):
    """A request that may succeed when repeated (connection refused or reset, timeout)."""


@dataclass(frozen=True)
class Response:
    status: int
    message: str
    retry_after_s: float | None = None


class Transport(ABC):
    """Posts one body of line protocol to InfluxDB; raises `TransientError` on network failures."""

    @abstractmethod
    def post(self, body: bytes, precision: Precision, rp: str) -> Response: ...

    @abstractmethod
    def describe(self, rp: str) -> str:
        """Where the writes go, for log and error messages (never with secrets)."""

    def close(self) -> None:
        return None

    def abort(self) -> None:
        """Make a request in progress in another thread fail now rather than at its timeout, and none be
        resent (the transport is being closed); a no-op where the client offers no way to."""
        return None


def _error_message(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(parsed, dict):
        return str(parsed.get("error") or parsed.get("message") or text)[:500]
    return text[:500]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class V1Transport(Transport):
    """InfluxDB 1.x `/write`: basic auth, gzip, one keep-alive connection (not thread-safe)."""

    def __init__(self, settings: InfluxSettings) -> None:
        self._settings = settings
        parsed = urllib.parse.urlsplit(settings.url)
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or (443 if self._https else 80)
        self._base_path = parsed.path.rstrip("/")
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        self._gzip = settings.use_gzip
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        if settings.username:
            credentials = f"{settings.username}:{settings.password}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False  # closing: a failed request is not resent on a new connection
        self._paths: dict[tuple[str, str], str] = {}

    def describe(self, rp: str) -> str:
        return f"{self._settings.url} db={self._settings.db} rp={rp}"

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        if self._conn is not None:
            return self._conn, True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._conn = cls(self._host, self._port, timeout=self._settings.timeout_s)
        return self._conn, False

    def _path(self, precision: Precision, rp: str) -> str:
        path = self._paths.get((precision, rp))
        if path is None:
            query = urllib.parse.urlencode({"db": self._settings.db, "rp": rp, "precision": _V1_PRECISION[precision]})
            path = self._paths[(precision, rp)] = f"{self._base_path}/write?{query}"
        return path

    def post(self, body: bytes, precision: Precision, rp: str) -> Response:
        if self._gzip:
            body = gzip.compress(body, compresslevel=1, mtime=0)
        path = self._path(precision, rp)
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.request("POST", path, body=body, headers=self._headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as err:
                self.close()
                # A kept-alive connection the server closed while idle fails at once: reconnect and resend.
                stale = isinstance(err, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError)
                if reused and stale and attempt == 1 and not self._aborted:
                    continue
                raise TransientError(f"{type(err).__name__}: {err}") from err
            if resp.will_close:
                self.close()
            if 200 <= resp.status < 300:
                return Response(resp.status, "")
            return Response(resp.status, _error_message(data), _retry_after(resp.getheader("Retry-After")))
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def abort(self) -> None:
        # Not under the writer's lock: the thread that holds it may sit in recv() on this socket.
        self._aborted = True
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # that recv() returns at once; the post fails, TransientError


class V2Transport(Transport):
    """InfluxDB 2.x/3.x `/api/v2/write` through influxdb-client (bucket `{db}/{rp}`, token auth)."""

    def __init__(self, settings: InfluxSettings) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._settings = settings
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.token,
            org=settings.org,
            timeout=int(settings.timeout_s * 1000),
            enable_gzip=settings.use_gzip,
            retries=False,  # the Writer retries, with the same policy for both APIs
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def describe(self, rp: str) -> str:
        return f"{self._settings.url} bucket={self._settings.bucket(rp)} org={self._settings.org}"

    def post(self, body: bytes, precision: Precision, rp: str) -> Response:
        import urllib3
        from influxdb_client.rest import ApiException

        try:
            self._api.write(
                bucket=self._settings.bucket(rp),
                org=self._settings.org,
                record=body,
                write_precision=precision,  # type: ignore[arg-type]  # WritePrecision values are these strings
            )
        except ApiException as err:
            if not err.status:
                raise TransientError(f"ApiException: {err.reason}") from err
            headers: Any = err.headers or {}
            message = _error_message((err.body or err.reason or "").encode())
            return Response(int(err.status), message, _retry_after(headers.get("Retry-After")))
        except (OSError, urllib3.exceptions.HTTPError) as err:
            raise TransientError(f"{type(err).__name__}: {err}") from err
        return Response(204, "")

    def close(self) -> None:
        self._api.close()
        self._client.close()


def make_transport(settings: InfluxSettings) -> Transport:
    return V2Transport(settings) if settings.api == "v2" else V1Transport(settings)
