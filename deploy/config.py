"""`smartcity.toml`: one configuration file, every key overridable by an environment variable.

A key `name` in section `[section]` is the variable `SMARTCITY_SECTION_NAME`
(top-level keys: `SMARTCITY_NAME`). The command line loads the file once (from
`--config`, `$SMARTCITY_CONFIG` or `./smartcity.toml`) and exports its values
into the process environment *under* the variables already set, so the
environment always wins and every component reads its settings the same way
(`<pkg>.settings.*.from_env()`). Unknown keys are errors that name the key.

    home = ".smartcity"

    [mqtt]
    url = "mqtt://ingest:PASSWORD@127.0.0.1:1883"

    [influx]
    url = "http://admin:PASSWORD@127.0.0.1:8086"
    db = "smartcity"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from sensors.errors import SmartcityError

PREFIX = "SMARTCITY_"
CONFIG_ENV = "SMARTCITY_CONFIG"
DEFAULT_FILE = Path("smartcity.toml")
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")


class ConfigError(SmartcityError):
    """A configuration file or value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Key:
    """One configuration key: its environment variable, its default and what it does."""

    env: str
    default: str
    help: str

    @property
    def toml(self) -> str:
        """`section.name` (or `name` for top-level keys) as written in smartcity.toml."""
        name = self.env[len(PREFIX) :].lower()
        section, _, rest = name.partition("_")
        return f"{section}.{rest}" if section in SECTIONS and rest else name


# Sections of smartcity.toml; every other top-level name is a plain key.
SECTIONS = ("mqtt", "influx", "ingest", "pipeline", "grafana")

KEYS: dict[str, Key] = {}
# Variables the loaded config file set (for `config show`).
FROM_FILE: set[str] = set()


def register(keys: Iterable[Key]) -> None:
    """Components declare the variables they read, so the file can be validated and shown."""
    for key in keys:
        KEYS[key.env] = key


# The keys every component shares; each package registers its own from its sample.toml (deploy/cli.py).
register(
    [
        Key("SMARTCITY_HOME", ".smartcity", "State folder: spool, secrets, local stack data, manifests."),
        Key("SMARTCITY_REGISTRY", "", "Registry files or folders (os.pathsep-separated); default: built-in."),
    ]
)


def env_name(section: str | None, name: str) -> str:
    return f"{PREFIX}{section.upper() + '_' if section else ''}{name.upper()}"


def read_file(path: Path) -> dict[str, str]:
    """The `SMARTCITY_*` values a config file sets; errors name the file and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    values: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            if name not in SECTIONS:
                raise ConfigError(f"{path}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
            for key, inner in value.items():
                values[_checked(path, env_name(name, key), f"[{name}] {key}", inner)] = _text(inner)
        else:
            values[_checked(path, env_name(None, name), name, value)] = _text(value)
    return values


def _checked(path: Path, env: str, where: str, value: object) -> str:
    if env not in KEYS:
        raise ConfigError(f"{path}: {where}: unknown key (see 'smartcity config show' for the known keys)")
    if isinstance(value, dict | list) and env != "SMARTCITY_REGISTRY":
        raise ConfigError(f"{path}: {where}: expected a single value")
    return env


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return os.pathsep.join(str(v) for v in value)
    return str(value)


def find_config(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such config file")
        return explicit
    if environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file (from ${CONFIG_ENV})")
        return path
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


def apply_config(explicit: Path | None, environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Load the config file (if any) into `environ` without overriding variables already set."""
    path = find_config(explicit, environ)
    if path is None:
        return None
    for env, value in read_file(path).items():
        if env not in environ:
            environ[env] = value
            FROM_FILE.add(env)
    return path


def effective(environ: Mapping[str, str] = os.environ) -> list[tuple[Key, str, str]]:
    """Every known key with its effective value (secrets masked) and where it came from."""
    rows = []
    for key in sorted(KEYS.values(), key=lambda k: k.env):
        if key.env in environ:
            value, source = environ[key.env], "file" if key.env in FROM_FILE else "environment"
        else:
            value, source = key.default, "default"
        rows.append((key, mask(key.env, value), source))
    return rows


def mask(env: str, value: str) -> str:
    """Hide passwords in URLs and secret values, keep the rest readable."""
    if any(word in env for word in SECRET_WORDS):
        return "****" if value else ""
    if "://" in value and "@" in value:
        scheme, _, rest = value.partition("://")
        userinfo, _, host = rest.rpartition("@")
        user = userinfo.split(":", 1)[0]
        return f"{scheme}://{user}:****@{host}" if ":" in userinfo else value
    return value
