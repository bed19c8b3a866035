"""TEST-ONLY compatibility adapter: InfluxDB 1.8's `/api/v2/write` in front of the real InfluxDB 1.6.7.

The Debian package ships InfluxDB 1.6.7, which has no `/api/v2/write` (that
compatibility endpoint arrived in 1.8). To run the 2.x/3.x writer
(influxdb-client) against a real database anyway, this adapter serves the
endpoint the way 1.8 does and forwards to 1.x `/write`:

- `Authorization: Token user:password` (1.8 takes the v1 credentials as the token);
- `bucket=db/rp` (an empty rp means the default RP); `org` is ignored;
- `precision=ns|us|ms|s`, mapped to 1.x's `n|u|ms|s`;
- the body (gzip or not) is passed through; errors come back as 2.x JSON
  `{"code", "message"}` with InfluxDB's status.

`/query` and `/ping` are forwarded with token auth turned into basic auth, as
1.8's v1 endpoints accept both. Never used outside tests.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
import urllib.parse
from typing import Any

from deploy.servers import free_port

_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _reply(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, json.dumps({"code": code, "message": message}).encode())

    def _basic_from_token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Token "):
            return "Basic " + base64.b64encode(auth[len("Token ") :].encode()).decode()
        if auth.startswith("Basic "):
            return auth
        return None

    def _forward(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.influx_port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as err:
            self._error(503, "unavailable", f"InfluxDB unreachable: {err}")
            return
        finally:
            conn.close()
        if path.startswith("/write") and resp.status >= 300:
            try:
                message = json.loads(data).get("error", "")
            except ValueError:
                message = data.decode("utf-8", "replace")
            self._error(resp.status, "invalid" if resp.status < 500 else "internal error", message)
            return
        self._reply(resp.status, data, resp.getheader("Content-Type") or "application/json")

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        body = self._body()
        auth = self._basic_from_token()
        if parsed.path == "/api/v2/write":
            if auth is None:
                self._error(401, "unauthorized", "missing Authorization: Token user:password")
                return
            params = urllib.parse.parse_qs(parsed.query)
            bucket = params.get("bucket", [""])[0]
            if not bucket:
                self._error(400, "invalid", "bucket is required")
                return
            db, _, rp = bucket.partition("/")
            precision = params.get("precision", ["ns"])[0]
            if precision not in _PRECISION:
                self._error(400, "invalid", f"invalid precision {precision!r}")
                return
            query = {"db": db, "precision": _PRECISION[precision]}
            if rp:
                query["rp"] = rp
            headers = {"Authorization": auth, "Content-Type": "text/plain; charset=utf-8"}
            if self.headers.get("Content-Encoding"):
                headers["Content-Encoding"] = self.headers["Content-Encoding"]
            self.server.writes += 1
            self._forward("POST", "/write?" + urllib.parse.urlencode(query), body, headers)
        elif parsed.path == "/query":
            headers = {"Content-Type": self.headers.get("Content-Type", "application/x-www-form-urlencoded")}
            if auth:
                headers["Authorization"] = auth
            self._forward("POST", self.path, body, headers)
        else:
            self._error(404, "not found", f"path not found: {parsed.path}")

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path in ("/ping", "/query"):
            headers = {}
            auth = self._basic_from_token()
            if auth:
                headers["Authorization"] = auth
            self._forward("GET", self.path, None, headers)
        else:
            self._error(404, "not found", f"path not found: {parsed.path}")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    influx_port: int
    writes: int


class V2CompatProxy:
    """Serves InfluxDB 1.8's v2 write API on a free port, forwarding to a 1.x server (tests only)."""

    def __init__(self, influx_port: int) -> None:
        self.port = free_port()
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.influx_port = influx_port
        self._server.writes = 0
        self._thread = threading.Thread(target=self._server.serve_forever, name="v2-compat-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def writes(self) -> int:
        """`/api/v2/write` requests served."""
        return self._server.writes

    def __enter__(self) -> V2CompatProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
