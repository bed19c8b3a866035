"""Ingest's per-message CPU without MQTT or InfluxDB: the consumer's and the raw writer's hot paths, in us.

A micro-benchmark for changes to `sensors.contract`, the spool record and the
raw writer's encoding (issue 19). It needs no broker or database and runs in
seconds on one core, so before/after figures can be taken back to back on a
busy machine (compare the two, not figures from another run). The stream is
`make bench`'s (bench/compare.py): the seeded simulator fleet from the start of
a UTC day, with about 2 % bad payloads (`FAULTS`: malformed JSON, out of range,
unit mismatch, ts in the future and too old, unknown sensor; plus duplicates,
late and out-of-order readings). Each path is timed over the whole stream,
`--rounds` times, and the best round is printed, per message (or per reading):

- `decode`: `Contract.decode`, the function the consumer calls per message;
- `consume`: the consumer's receive path on a consumer that is never connected:
  its `FastClient` cuts the MQTT PUBLISH packets out of each read (64 KiB, as
  the socket gives them under load) and hands them to the consumer (decode,
  conflict index, metrics, reject notice and record, the spool record appended
  to the pending batch), with a group commit whenever `flush_max_kib` are
  pending (its fsync is I/O, not counted; no acknowledgement is sent);
- `writer`: the raw writer's path per reading, over the segment `consume`
  wrote: `StreamTail.read_json` (read the line, verify its checksum) and line
  protocol (`RawLines.record_lines`, which decodes what it needs of the
  record, joined as one request body, as `storage.writer` sends it), and
  `read` and `lines` on their own.

The rejected messages of the stream are checked against their simulator
category, so a faster path that decides differently fails here too.

EXAMPLES
    .venv/bin/python -m bench.hotpath
    .venv/bin/python -m bench.hotpath --messages 50000 --rounds 5
    .venv/bin/python -m bench.hotpath --only decode --profile    # cProfile of one round, top 25
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.compare import ACCEPTED, FAULTS, Stream, replay_stream
from ingest.consumer import Consumer, Pending
from ingest.fastpaho import FastClient
from ingest.metrics import Metrics
from ingest.settings import IngestSettings
from ingest.spool import StreamWriter
from ingest.spooltail import Position, StreamTail
from sensors.contract import Contract, RejectCode, Rejected
from sensors.registry import default_registry
from storage.schema import RawLines

PATHS = ("decode", "consume", "writer")


def best_us(run: Callable[[], int], rounds: int) -> float:
    """The fastest of `rounds` runs, in us per item (`run` returns how many items it handled)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        items = run()
        best = min(best, (time.process_time() - started) * 1e6 / items)
    return best


def check_decisions(contract: Contract, stream: Stream, received_ms: int) -> Counter[str]:
    """Reject codes of the stream; raises if a message is decided otherwise than its simulator category."""
    codes: Counter[str] = Counter()
    for m in stream.messages:
        result = contract.decode(m.topic, m.payload, received_ms)
        code = result.code.value if isinstance(result, Rejected) else None
        # A conflict passes the contract: ingest refuses it against what it stored (the conflict index).
        passes = m.category in ACCEPTED or m.category == RejectCode.CONFLICT
        if (code is None) != passes or (code is not None and code != m.category):
            raise SystemExit(f"{m.topic} {m.payload[:80]!r}: decided {code or 'accepted'}, expected {m.category}")
        codes[code or "accepted"] += 1
    return codes


def bench_decode(contract: Contract, stream: Stream, received_ms: int) -> Callable[[], int]:
    messages = [(m.topic, m.payload) for m in stream.messages]
    decode = contract.decode

    def run() -> int:
        for topic, payload in messages:
            decode(topic, payload, received_ms)
        return len(messages)

    return run


def new_consumer(contract: Contract, home: Path) -> Consumer:
    """A consumer as `smartcity ingest` builds it, on a spool of its own, never connected."""
    settings = IngestSettings(home=home)
    spool: StreamWriter[Pending] = StreamWriter(settings.stream_dir, segment_max_bytes=2**40, segment_max_age_s=1e9)
    return Consumer(settings, contract, spool, Metrics())


def publish_packet(mid: int, topic: bytes, payload: bytes) -> bytes:
    """An MQTT 5 PUBLISH at QoS 1 without properties, as Mosquitto sends it to a QoS 1 subscriber."""
    body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + b"\x00" + payload
    length, size = bytearray(), len(body)
    while True:  # remaining length: 7 bits a byte, least significant first
        size, digit = size >> 7, size & 0x7F
        length.append(digit | (0x80 if size else 0))
        if not size:
            break
    return bytes([0x32]) + bytes(length) + body


def socket_reads(stream: Stream, read_bytes: int = FastClient.READ_BYTES) -> list[bytes]:
    """The stream's PUBLISH packets, cut into reads of at most `read_bytes` of whole packets."""
    reads: list[bytes] = []
    current = bytearray()
    for i, m in enumerate(stream.messages):
        packet = publish_packet(i % 65535 + 1, m.topic.encode(), m.payload)
        if current and len(current) + len(packet) > read_bytes:
            reads.append(bytes(current))
            current.clear()
        current += packet
    reads.append(bytes(current))
    return reads


def bench_consume(contract: Contract, stream: Stream, home: Path) -> tuple[Callable[[], int], list[Path]]:
    """The consumer's receive path over the stream; each round on a new consumer (a fresh conflict index)."""
    reads = socket_reads(stream)
    segments: list[Path] = []

    def run() -> int:
        consumer = new_consumer(contract, home / f"round-{len(segments)}")
        client = consumer._client
        assert isinstance(client, FastClient)
        wake = consumer._wake
        for data in reads:
            client._rbuf, client._rpos = data, 0
            client._read_buffered_publishes()
            if client._rpos != len(data):
                raise SystemExit(f"the client left {len(data) - client._rpos} bytes of a read undelivered")
            if wake.is_set():  # the committer's group commit (it runs in a thread of its own in ingest)
                wake.clear()
                consumer.spool.commit()
        consumer.spool.close()
        segments.append(consumer.spool.closed[0].path)
        if consumer.metrics.received != len(stream.messages):
            raise SystemExit(f"the consumer got {consumer.metrics.received} of {len(stream.messages)} messages")
        return len(stream.messages)

    return run, segments


def bench_writer(segment: Path, part: str) -> Callable[[], int]:
    """The raw writer's work per reading on a closed segment: `part` is read, lines or both."""
    records = StreamTail(segment.parent, Position(1, 0), check=False).read_json(10**9)
    batch = 5000  # [ingest] write_batch_points

    def read() -> int:
        tail = StreamTail(segment.parent, Position(1, 0), check=False)
        count = 0
        while got := tail.read_json(batch):
            count += len(got)
        tail.close()
        return count

    def lines() -> int:
        raw_lines = RawLines()
        for start in range(0, len(records), batch):
            body(raw_lines.record_lines(records[start : start + batch])[0])
        return len(records)

    def whole() -> int:
        raw_lines = RawLines()
        tail = StreamTail(segment.parent, Position(1, 0), check=False)
        count = 0
        while got := tail.read_json(batch):
            body(raw_lines.record_lines(got)[0])
            count += len(got)
        tail.close()
        return count

    return {"read": read, "lines": lines, "all": whole}[part]


def body(lines: list[str]) -> bytes:
    """The request body of a batch, as `storage.writer` makes it."""
    lines.append("")
    return "\n".join(lines).encode()


def profile(run: Callable[[], int], top: int) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(run)
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages of the stream (default 20,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each path; the best is kept (default 5)")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed (default 7, as make bench)")
    parser.add_argument("--only", choices=PATHS, action="append", help="time only this path (repeatable)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one round of each path")
    args = parser.parse_args(argv)
    paths = args.only or PATHS

    registry = default_registry()
    contract = Contract(registry)
    stream = replay_stream(registry, args.messages, FAULTS, args.seed)
    received_ms = int(time.time() * 1000)
    codes = check_decisions(contract, stream, received_ms)
    print(f"{len(stream.messages)} messages, seed {args.seed}: " + ", ".join(f"{k} {v}" for k, v in codes.items()))

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="smartcity-hotpath-") as tmp:
        if "decode" in paths:
            run = bench_decode(contract, stream, received_ms)
            results["decode us/msg"] = best_us(run, args.rounds)
            if args.profile:
                profile(run, 25)
        if "consume" in paths or "writer" in paths:
            consume, segments = bench_consume(contract, stream, Path(tmp))
            us = best_us(consume, args.rounds if "consume" in paths else 1)
            if "consume" in paths:
                results["consume us/msg"] = us
                if args.profile:
                    profile(consume, 25)
            if "writer" in paths:
                for part in ("all", "read", "lines"):
                    run = bench_writer(segments[0], part)
                    results[f"writer {part} us/reading"] = best_us(run, args.rounds)
                    if args.profile and part == "all":
                        profile(run, 25)
    print(f"python {sys.version.split()[0]}, best of {args.rounds} rounds (process CPU time)")
    for name, value in results.items():
        print(f"  {name:<28} {value:7.2f}")


if __name__ == "__main__":
    main()
