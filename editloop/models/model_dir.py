"""Version and public config of a model directory (shared by services and trainers)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from editloop.models.card import read_card


def model_version(path: Path) -> str:
    """`version` from editloop.json if present, else a digest of the weight files' names and sizes."""
    version = read_card(path).get("version")
    if version:
        return str(version)
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"):
            h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return "d" + h.hexdigest()[:12]


def public_config(config) -> dict:
    """The model's resolved config without diffusers' private bookkeeping (paths, versions)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}
