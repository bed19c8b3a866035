"""One way for every package to read its settings.

Each package that has settings keeps two things side by side:

- `<pkg>/sample.toml`: every key of its section with its default (`# key = default`) and what it does
  (`## ...` lines above it). It is the reference: the package README copies it, `smartcity config show`
  lists it, and a key it lists is accepted in `smartcity.toml`.
- a frozen dataclass in `<pkg>/settings.py` whose field names are the keys and whose type hints say how to
  read the text: `read_env` converts `SMARTCITY_{SECTION}_{KEY}` with them, so the variable, the
  `[section] key` and the field are one name. Units are in the names (`_s`, `_ms`, `_mib`, `_h`).

Every error names the variable and the key the same way:
`SMARTCITY_INGEST_KEEPALIVE_S ([ingest] keepalive_s): must be between 5 and 65535, got 1`.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from sensors.errors import SmartcityError

PREFIX = "SMARTCITY_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingError(SmartcityError, ValueError):
    """A setting that cannot be used; the message names its variable and smartcity.toml key."""


def env_name(section: str | None, key: str) -> str:
    """`SMARTCITY_INGEST_CLIENT_ID` for `[ingest] client_id`; `SMARTCITY_HOME` for the top-level `home`."""
    return f"{PREFIX}{section.upper() + '_' if section else ''}{key.upper()}"


def where(env: str) -> str:
    """`SMARTCITY_INGEST_CLIENT_ID ([ingest] client_id)`: how every message names a setting."""
    section, _, key = env.removeprefix(PREFIX).lower().partition("_")
    return f"{env} ([{section}] {key})" if key else env


def convert(env: str, hint: Any, raw: str, error: type[SettingError] = SettingError) -> Any:
    """The text of a variable as the field's type: int, float, bool, `bool | None` ("auto"), Path,
    `Path | None`, `tuple[str, ...]` (comma-separated), a Literal, or str."""
    text = raw.strip()
    optional = type(None) in typing.get_args(hint) and isinstance(hint, types.UnionType)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if optional and text.lower() in ("", "auto"):
        return None
    try:
        if base is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}[base]
        expected += " (or auto)" if optional else ""
        raise error(f"{where(env)}: must be {expected}, got {raw!r}") from None
    if base is Path:
        return Path(text)
    if base == tuple[str, ...]:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if typing.get_origin(base) is Literal and text not in typing.get_args(base):
        raise error(f"{where(env)}: must be one of {', '.join(typing.get_args(base))}, got {raw!r}")
    return text


def read_env(
    cls: type,
    section: str,
    environ: Mapping[str, str],
    *,
    skip: Iterable[str] = (),
    error: type[SettingError] = SettingError,
) -> dict[str, Any]:
    """The fields of dataclass `cls` that `environ` sets, converted by their type hints (empty means unset,
    except for optional fields, where it means None)."""
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skipped:
            continue
        env = env_name(section, f.name)
        raw = environ.get(env)
        if raw is None or (raw.strip() == "" and type(None) not in typing.get_args(hints[f.name])):
            continue
        values[f.name] = convert(env, hints[f.name], raw, error)
    return values


def check_ranges(
    settings: object, section: str, ranges: Mapping[str, tuple[float, float]], error: type[SettingError]
) -> None:
    """Each named numeric field within its inclusive range."""
    for name, (low, high) in ranges.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise error(f"{where(env_name(section, name))}: must be between {low:g} and {high:g}, got {value!r}")


# -- sample.toml: the documented keys ------------------------------------------------------------

_KEY_LINE = re.compile(r"^# (\w+) = (.*)$")
_SECTION_LINE = re.compile(r"^\[(\w+)\]$")


def sample_keys(path: Path) -> list[tuple[str, str, str]]:
    """(variable, default, help) of every key in a sample.toml: `##` lines explain, `# key = default` shows it.

    A key without its own `##` lines shares the help of the key just above it.
    """
    keys: list[tuple[str, str, str]] = []
    section = ""
    explain: list[str] = []
    last_help = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := _SECTION_LINE.match(line):
            section, explain, last_help = match.group(1), [], ""
        elif line.startswith("##"):
            explain.append(line[2:].strip())
        elif match := _KEY_LINE.match(line):
            if explain:
                last_help, explain = " ".join(explain), []
            name, default = match.groups()
            keys.append((env_name(section or None, name), default.strip('"'), last_help))
        elif not line.strip():
            explain = []
    return keys


def sample_defaults(path: Path) -> dict[str, dict[str, Any]]:
    """A sample.toml with every `# key = default` line uncommented, parsed as TOML: {section: {key: default}}
    ("" holds the top-level keys)."""
    data = tomllib.loads(re.sub(r"^# (\w+ = )", r"\1", path.read_text(encoding="utf-8"), flags=re.MULTILINE))
    return {
        "": {k: v for k, v in data.items() if not isinstance(v, dict)},
        **{k: v for k, v in data.items() if isinstance(v, dict)},
    }
