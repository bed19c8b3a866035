"""deploy/compose.yaml and compose's `${VAR}` interpolation, for the compose tests."""

from __future__ import annotations

import re
from pathlib import Path

COMPOSE = Path(__file__).parents[2] / "deploy" / "compose.yaml"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def substitute(text: str, env: dict[str, str]) -> str:
    """`text` with `${NAME}`, `${NAME:-default}` and `${NAME:?error}` replaced as compose does; `$$` is `$`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        default = match.group(0)[len(name) + 2 : -1]
        if name in env:
            return env[name]
        if default.startswith((":-", "-")):
            return default.split("-", 1)[1]
        raise AssertionError(f"compose.yaml uses ${{{name}}}, which compose init does not define")

    return VARIABLE.sub(value, text.replace("$$", "\0")).replace("\0", "$")
