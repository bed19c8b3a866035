"""A local certificate authority and the broker's server certificate, for MQTT over TLS.

`smartcity stack up` and `smartcity compose init` call `ensure_certificates`:

    ca.crt        the CA vendors verify the broker against (hand it over with the password)
    ca.key        its private key (0600); never mounted into the broker
    server.crt    the broker's certificate, signed by the CA, for the host names given
    server.key    its private key (0600)

The CA is created once and then kept: vendors pin it, so it must not change under them.
The server certificate is issued again when its host names change, when it no longer
matches the CA, or when it is close to expiry; the next run of either command renews it.
Keys are ECDSA P-256 (small, fast, supported by Mosquitto 2.0 and every MQTT client).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sensors.errors import SmartcityError

CA_VALID_DAYS = 10 * 365
SERVER_VALID_DAYS = 397  # the public-CA limit; renewed by the next `stack up` / `compose init`
RENEW_BEFORE_DAYS = 30
# Names every server certificate carries: the broker is reached on the machine itself too.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class TlsError(SmartcityError):
    """The certificate files cannot be read or written."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the server certificate live (the CA's key apart from what the broker mounts)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_folders(cls, ca_dir: Path, server_dir: Path) -> TlsFiles:
        return cls(ca_dir / "ca.crt", ca_dir / "ca.key", server_dir / "server.crt", server_dir / "server.key")


def machine_names() -> list[str]:
    """This machine's names, for a broker that vendors reach by its host name."""
    names = [socket.gethostname(), socket.getfqdn()]
    return [name for name in dict.fromkeys(names) if name and name != "localhost"]


def ensure_certificates(files: TlsFiles, host_names: Iterable[str]) -> bool:
    """Create the CA if missing and (re)issue the server certificate if needed; True when it was issued."""
    names = list(dict.fromkeys([*LOCAL_NAMES, *host_names]))
    try:
        if files.ca_cert.exists() and files.ca_key.exists():
            ca_key = _load_key(files.ca_key)
            ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        else:
            ca_key, ca_cert = _new_ca()
            _write_key(files.ca_key, ca_key)
            _write_public(files.ca_cert, ca_cert)
        if _server_cert_current(files, ca_cert, names):
            return False
        server_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(files.server_key, server_key)
        _write_public(files.server_cert, _issue_server(ca_key, ca_cert, server_key, names))
        return True
    except OSError as err:
        raise TlsError(f"TLS certificates: {err.filename}: {err.strerror or err}") from err
    except ValueError as err:
        where = files.ca_cert.parent
        raise TlsError(f"TLS certificates in {where}: unreadable ({err}); remove them to start anew") from err


def certificate_names(path: Path) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC key")
    return key


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Written 0600 from the start, never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)


def _write_public(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smartcity"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"smartcity broker CA {socket.gethostname()}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)  # fmt: skip


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _issue_server(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, names: Sequence[str]
) -> x509.Certificate:
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=SERVER_VALID_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_alt_name(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _server_cert_current(files: TlsFiles, ca_cert: x509.Certificate, names: Sequence[str]) -> bool:
    """The server certificate exists, is signed by this CA, names exactly `names` and is not about to expire."""
    if not files.server_cert.exists() or not files.server_key.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        key = _load_key(files.server_key)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        return False
    if cert.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return False
    return sorted(certificate_names(files.server_cert)) == sorted(str(_alt_name(n).value) for n in names)
