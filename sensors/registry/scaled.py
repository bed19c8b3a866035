"""The pilot fleet times N: the built-in registry with every fleet rule's count multiplied.

Same kinds, places and vendors; the rules spread their sensors round-robin over sites and
vendors as the pilot's do, so the first sensors of each rule (the pilot's own ids) keep the
pilot's places, and `{city}-{kind}-{nnn}` numbers run on. Explicit sensors are copied with an
`-xNN` suffix. Used by the capacity benchmark (`bench/capacity.py`) and by tests at fleet scale.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from sensors.registry import BUILTIN_DIR, Registry, RegistryError, default_registry, load_registry


def write_scaled_registry(folder: Path, n: int) -> Registry:
    """Write N x the built-in registry's fleet (and its other files as they are) to `folder`, and load it."""
    folder.mkdir(parents=True)
    for file in BUILTIN_DIR.glob("*.yaml"):
        if file.name != "fleet.yaml":
            shutil.copyfile(file, folder / file.name)
    pilot = yaml.safe_load((BUILTIN_DIR / "fleet.yaml").read_text())
    # Scaling the rules keeps the pilot's spread over sites and vendors, and a file every process parses fast.
    rules = [{**rule, "count": rule["count"] * n} for rule in pilot.get("fleet") or []]
    extra = [{**s, "id": f"{s['id']}-x{k:02d}" if k else s["id"]} for k in range(n) for s in pilot.get("sensors") or []]
    text = yaml.safe_dump({"fleet": rules, "sensors": extra}, sort_keys=False)
    (folder / "fleet.yaml").write_text(f"# the pilot fleet x {n} (sensors/registry/scaled.py)\n{text}")
    registry = load_registry([folder])
    expected = n * len(default_registry().sensors)
    if len(registry.sensors) != expected:
        raise RegistryError(f"{folder}: the x{n} registry has {len(registry.sensors)} sensors, not {expected}")
    return registry
