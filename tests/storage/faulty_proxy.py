"""TEST-ONLY fault injection: an HTTP proxy in front of the real InfluxDB that answers the first
requests with chosen errors (e.g. 503, 500, 429) and forwards the rest unchanged."""

from __future__ import annotations

import http.client
import http.server
import threading
from collections import deque
from typing import Any

from deploy.servers import free_port


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _handle(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
        with self.server.lock:
            self.server.requests += 1
            fault = self.server.faults.popleft() if self.server.faults else None
        if fault is not None:
            payload = b'{"error":"injected fault"}'
            self.send_response(fault)
            if fault in (429, 503):
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.influx_port, timeout=30)
        try:
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self._handle("POST")

    def do_GET(self) -> None:
        self._handle("GET")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    influx_port: int
    faults: deque[int]
    requests: int
    lock: threading.Lock


class FaultyProxy:
    def __init__(self, influx_port: int, faults: list[int]) -> None:
        self.port = free_port()
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.influx_port = influx_port
        self._server.faults = deque(faults)
        self._server.requests = 0
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        return self._server.requests

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
