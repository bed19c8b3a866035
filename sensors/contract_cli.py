"""`smartcity contract ...`: the vendor contract as files, the vendor guide, and an offline check.

    smartcity contract build --out DIR       AsyncAPI 3.0 + JSON Schemas (DIR/asyncapi.yaml, DIR/schemas/)
    smartcity contract docs docs/vendors.md  redo the guide's generated sections (--check: fail if stale)
    smartcity contract check --topic T --payload FILE
                                             would ingest accept this message? exit 0 yes, 1 no

`check` runs `Contract.decode`, the code ingest runs, so a vendor gets the
same code and detail offline as from the reject topic.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import click
import msgspec

from sensors.cli import registry_from, registry_option
from sensors.contract import DEFAULT_MAX_AGE_MS, Accepted, Contract, reject_topic
from sensors.contract_guide import render_doc
from sensors.contract_spec import ContractSpecError, reject_message, spec_files
from sensors.timeparse import time_option

_DURATION = re.compile(r"^([1-9][0-9]*)(ms|s|m|h|d|w)$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def _duration_ms(value: str) -> int:
    """`--max-age`: a duration (72h, 3d, 4w) or INF."""
    if value == "INF":
        return 10**18
    match = _DURATION.match(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 72h, 3d or INF", param_hint="--max-age")
    return int(match[1]) * _DURATION_MS[match[2]]


@click.group("contract")
def contract_group() -> None:
    """The vendor contract: AsyncAPI, JSON Schemas, the vendor guide, and an offline check."""


@contract_group.command("build")
@registry_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write asyncapi.yaml and schemas/ into (created if missing).",
)
@click.option("--vendor", help="Only this vendor's kinds, cities and sensors (a document to hand to that vendor).")
@click.option(
    "--host", default="localhost", show_default=True, help="Broker host name of the AsyncAPI 'production' server."
)
def build(registry_paths: Sequence[Path], out_dir: Path, vendor: str | None, host: str) -> None:
    """Write the AsyncAPI 3.0 document and the JSON Schemas (2020-12) of every sensor kind."""
    files = spec_files(registry_from(registry_paths), vendor=vendor, host=host)
    try:
        (out_dir / "schemas").mkdir(parents=True, exist_ok=True)
        # Schemas of kinds no longer in the registry must not linger next to the new ones.
        for stale in (out_dir / "schemas").glob("*.schema.json"):
            if f"schemas/{stale.name}" not in files:
                stale.unlink()
        for name, text in files.items():
            (out_dir / name).write_text(text, encoding="utf-8")
    except OSError as err:
        raise ContractSpecError(f"--out {out_dir}: cannot write: {err.strerror or err}") from None
    schemas = sum(name.startswith("schemas/") for name in files)
    click.echo(f"wrote {out_dir / 'asyncapi.yaml'} and {schemas} JSON Schemas in {out_dir / 'schemas'}")


@contract_group.command("docs")
@registry_option
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if the generated sections are out of date.")
def docs(registry_paths: Sequence[Path], path: Path, check: bool) -> None:
    """Redo the generated sections of the vendor guide (PATH, e.g. docs/vendors.md) from the registry."""
    text = path.read_text(encoding="utf-8")
    rendered = render_doc(text, registry_from(registry_paths), where=str(path))
    if rendered == text:
        click.echo(f"{path} is up to date")
    elif check:
        raise ContractSpecError(f"{path} is out of date: run 'smartcity contract docs {path}'")
    else:
        path.write_text(rendered, encoding="utf-8")
        click.echo(f"updated {path}")


@contract_group.command("check")
@registry_option
@click.option("--topic", required=True, help="The topic the message would be published on.")
@click.option(
    "--payload",
    "payload_file",
    required=True,
    type=click.File("rb"),
    help="File with the exact payload bytes ('-' for standard input).",
)
@time_option("--received-at", "received_at", unit="ms", help="Judge as if the broker received it then [default: now].")
@click.option(
    "--max-age",
    default=f"{DEFAULT_MAX_AGE_MS // 3_600_000}h",
    show_default=True,
    help="Acceptance window: readings older than this are refused (ts_too_old); ingest's accept_max_age_h.",
)
@click.option("--json", "as_json", is_flag=True, help="On rejection, print the message ingest would publish.")
@click.pass_context
def check(
    ctx: click.Context,
    registry_paths: Sequence[Path],
    topic: str,
    payload_file: BinaryIO,
    received_at: int | None,
    max_age: str,
    as_json: bool,
) -> None:
    """Would ingest accept this message? Exit 0 and print the readings, or exit 1 and print 'code: detail'."""
    received_ms = time.time_ns() // 1_000_000 if received_at is None else received_at
    contract = Contract(registry_from(registry_paths), max_age_ms=_duration_ms(max_age))
    payload = payload_file.read()
    result = contract.decode(topic, payload, received_ms)
    if isinstance(result, Accepted):
        for reading in result.readings:
            click.echo(msgspec.json.encode(reading).decode())
        count = len(result.readings)
        click.echo(f"accepted: {count} reading{'s' if count != 1 else ''} of {result.sensor.id}", err=True)
        return
    if as_json:
        click.echo(json.dumps(reject_message(topic, payload, result, received_ms)))
    else:
        click.echo(f"{result.code.value}: {result.detail}")
    click.echo(f"rejected: ingest would publish the reason on {reject_topic(topic)}", err=True)
    ctx.exit(1)
