"""deploy/tls.py: the CA is kept, the server certificate follows its names, keys stay private."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

from deploy.tls import TlsFiles, certificate_names, ensure_certificates


def test_ca_is_kept_and_the_server_certificate_follows_its_names(tmp_path: Path) -> None:
    files = TlsFiles.in_folders(tmp_path / "ca", tmp_path / "server")
    assert ensure_certificates(files, ["broker.example.city"])
    ca = files.ca_cert.read_bytes()
    assert not ensure_certificates(files, ["broker.example.city"]), "nothing changed: nothing issued"
    assert ensure_certificates(files, ["mqtt.example.city", "192.0.2.7"])
    assert files.ca_cert.read_bytes() == ca
    assert set(certificate_names(files.server_cert)) == {"localhost", "127.0.0.1", "::1", "mqtt.example.city",
                                                         "192.0.2.7"}  # fmt: skip
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_server_certificate_of_another_ca_is_issued_again(tmp_path: Path) -> None:
    files = TlsFiles.in_folders(tmp_path, tmp_path)
    ensure_certificates(files, [])
    files.ca_key.unlink()
    files.ca_cert.unlink()
    assert ensure_certificates(files, []), "a new CA: the old server certificate no longer verifies"


def test_the_chain_verifies_with_pythons_default_tls_checks(tmp_path: Path) -> None:
    files = TlsFiles.in_folders(tmp_path, tmp_path)
    ensure_certificates(files, [])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    client = ssl.create_default_context(cafile=str(files.ca_cert))
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"x")
        thread.join(5)
