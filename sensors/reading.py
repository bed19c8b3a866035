"""A validated sensor reading and its durable record format (one spool line).

A `Reading` is what ingest accepted: one sensor, one instant, one or more
metric values, plus the registry context it was validated against (so a
closed spool segment is self-describing even if the registry changes later).
Its identity is `(sensor_id, ts)`; writing the same reading twice is harmless.

Spool line format, shared by `ingest` (writer) and `pipelines` (reader):

    <crc32 of the JSON, 8 lowercase hex digits> <space> <JSON object> <LF>

    1b0e3a9c {"sensor_id":"pkt-aq-001","kind":"air_quality","ts":1764028800000,...}

The checksum makes a torn or corrupted line detectable, so a crash in the
middle of an append is truncated on restart instead of being propagated.
Rejected messages use the same framing with a `Rejection` object.
"""

from __future__ import annotations

import zlib

import msgspec

from sensors.errors import SmartcityError


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One accepted reading. `ts` and `received` are UTC epoch milliseconds."""

    sensor_id: str
    kind: str
    ts: int
    values: dict[str, float]
    vendor: str
    super_cluster: str
    city: str
    district: str
    site: str
    seq: int | None = None
    received: int = 0


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """One rejected message, as published on the reject topic and kept for audit.

    `received_at` is RFC 3339 UTC. The kept record holds the first 512 bytes of
    the payload in `payload_b64`, with its full length (`payload_bytes`) and
    SHA-256 (`payload_sha256`, what tells two rejected messages apart), so a
    flood of large bad messages costs little disk; records written before these
    fields existed hold the first 4 KiB and no digest. `sensor_id` and `vendor`
    are filled when the topic names a known sensor.
    """

    code: str
    detail: str
    topic: str
    received_at: str
    payload_b64: str
    sensor_id: str | None = None
    vendor: str | None = None
    payload_bytes: int | None = None
    payload_sha256: str | None = None


class CorruptRecord(SmartcityError):
    """A spool line whose checksum or JSON does not verify (e.g. torn by a crash)."""


_reading_encoder = msgspec.json.Encoder()
_reading_decoder = msgspec.json.Decoder(Reading)
_rejection_decoder = msgspec.json.Decoder(Rejection)


def _frame(body: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _unframe(line: bytes) -> bytes:
    if len(line) < 11 or line[8] != 0x20 or line[-1] != 0x0A:  # a space after the checksum, a newline at the end
        raise CorruptRecord(f"not a framed spool line: {line[:40]!r}")
    body = line[9:-1]
    try:
        expected = int(line[:8], 16)
    except ValueError as err:
        raise CorruptRecord(f"bad checksum field: {line[:8]!r}") from err
    if zlib.crc32(body) != expected:
        raise CorruptRecord(f"checksum mismatch: {line[:40]!r}")
    return body


def encode_reading(reading: Reading) -> bytes:
    """One spool line (with checksum and trailing newline)."""
    return _frame(_reading_encoder.encode(reading))


def decode_reading(line: bytes) -> Reading:
    """Parse one spool line; raises `CorruptRecord` if it does not verify."""
    try:
        return _reading_decoder.decode(_unframe(line))
    except msgspec.DecodeError as err:
        raise CorruptRecord(f"invalid reading record: {err}") from err


def encode_rejection(rejection: Rejection) -> bytes:
    return _frame(_reading_encoder.encode(rejection))


def decode_rejection(line: bytes) -> Rejection:
    try:
        return _rejection_decoder.decode(_unframe(line))
    except msgspec.DecodeError as err:
        raise CorruptRecord(f"invalid rejection record: {err}") from err


def verify_line(line: bytes) -> bool:
    """True if the line is complete and its checksum matches (no JSON parsing)."""
    try:
        _unframe(line)
    except CorruptRecord:
        return False
    return True
