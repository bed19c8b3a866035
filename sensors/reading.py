"""A validated sensor reading and its durable record format (one spool line).

A `Reading` is what ingest accepted: one sensor, one instant, one or more
metric values, plus the registry context it was validated against (so a
closed spool segment is self-describing even if the registry changes later).
Its identity is `(sensor_id, ts)`; writing the same reading twice is harmless.

Spool line format, shared by `ingest` (writer) and `pipelines` (reader):

    <crc32 of the JSON, 8 lowercase hex digits> <space> <JSON object> <LF>

    1b0e3a9c {"sensor_id":"pkt-aq-001","kind":"air_quality","vendor":...,"site":...,"ts":1764028800000,...}

The checksum makes a torn or corrupted line detectable, so a crash in the
middle of an append is truncated on restart instead of being propagated.
Rejected messages use the same framing with a `Rejection` object.

A reading's sensor context (`sensor_id` to `site`) comes first and `ts` right
after it, so every reading of a sensor starts with the same bytes up to
`,"ts":` and the raw writer turns those bytes into the sensor's series key once
(`split_reading`). Readers decode by name: segments written before this order
(`ts` and `values` after `kind`) read the same.
"""

from __future__ import annotations

import zlib

import msgspec

from sensors.errors import SmartcityError


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One accepted reading. `ts` and `received` are UTC epoch milliseconds."""

    sensor_id: str
    kind: str
    vendor: str
    super_cluster: str
    city: str
    district: str
    site: str
    ts: int
    values: dict[str, float]
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


class ReadingTail(msgspec.Struct):
    """What a reading's raw point needs of its record after the sensor context (`split_reading`)."""

    ts: int
    values: dict[str, float]


class CorruptRecord(SmartcityError):
    """A spool line whose checksum or JSON does not verify (e.g. torn by a crash)."""


_reading_encoder = msgspec.json.Encoder()
_reading_decoder = msgspec.json.Decoder(Reading)
_rejection_decoder = msgspec.json.Decoder(Rejection)
_tail_decoder = msgspec.json.Decoder(ReadingTail)
_TS_KEY = b',"ts":'


def _frame(body: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(body), body)


def unframe(line: bytes) -> bytes:
    """The JSON of a framed spool line; raises `CorruptRecord` if it does not verify."""
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
    return decode_reading_json(unframe(line))


def decode_reading_json(body: bytes) -> Reading:
    """A reading from the JSON of a verified line (`unframe`); raises `CorruptRecord` if it is not one."""
    try:
        return _reading_decoder.decode(body)
    except msgspec.DecodeError as err:
        raise CorruptRecord(f"invalid reading record: {err}") from err


def split_reading(body: bytes) -> tuple[bytes, ReadingTail] | None:
    """A reading record's JSON (`unframe`) cut before `,"ts":`: the bytes of its sensor context (the same
    for every reading of the sensor while its context stays), and its `ts` and `values`; None when the
    rest is not a reading's (decode it whole to say why).

    The context bytes are only that when the record is in this module's field order; the caller checks
    it once per distinct context (`context_of`)."""
    at = body.find(_TS_KEY)  # JSON escapes a '"' inside a string: the first `,"ts":` is the key
    if at < 0:
        return None
    try:
        return body[:at], _tail_decoder.decode(b"{" + body[at + 1 :])
    except msgspec.DecodeError:
        return None


def context_of(reading: Reading) -> bytes:
    """The context bytes `split_reading` cuts from this reading's record, as `encode_reading` writes it."""
    body = _reading_encoder.encode(reading)
    return body[: body.find(_TS_KEY)]


def encode_rejection(rejection: Rejection) -> bytes:
    return _frame(_reading_encoder.encode(rejection))


def decode_rejection(line: bytes) -> Rejection:
    try:
        return _rejection_decoder.decode(unframe(line))
    except msgspec.DecodeError as err:
        raise CorruptRecord(f"invalid rejection record: {err}") from err


def verify_line(line: bytes) -> bool:
    """True if the line is complete and its checksum matches (no JSON parsing)."""
    try:
        unframe(line)
    except CorruptRecord:
        return False
    return True
