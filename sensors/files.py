"""Durable small files: the one way every package replaces a state, metadata or manifest file.

A reader sees the old file or the complete new one, never half of it, and after return the new file
survives a power loss: temp file in the same folder, fsync, rename, fsync of the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a create, rename or delete in folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably (folders created as needed; 0600 by default:
    state files hold positions, metadata and secrets, nothing others need to read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, *, indent: int | None = None, mode: int = 0o600) -> None:
    """`write_atomic` of `data` as UTF-8 JSON (keys sorted unless indented for people to read)."""
    text = json.dumps(data, indent=indent, sort_keys=indent is None, ensure_ascii=False)
    write_atomic(path, (text + ("\n" if indent is not None else "")).encode("utf-8"), mode)
