"""The committed base models (trained here by `editloop world pretrain`, see editloop/weights/README.md)."""

from __future__ import annotations

from pathlib import Path

import torch

from editloop.models.zoo import load_pipeline
from editloop.paths import BASE_DIR


def base_model_dir(kind: str) -> Path:
    """`t2i` or `inpaint` directory of the committed base models; clear error if absent."""
    if kind not in ("t2i", "inpaint"):
        raise ValueError(f"`kind` must be 't2i' or 'inpaint', got {kind!r}")
    path = BASE_DIR / kind
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no base {kind} model at {path}; train one with `editloop world pretrain` and export it "
            f"with `editloop world export-base RUN_DIR`"
        )
    return path


def base_fingerprint() -> str:
    """Which committed base this is: the first 12 hex digits of the sha1 of its progress.json (the run's
    config and metrics), so results and checkpoints made from one base are not taken for another's."""
    import hashlib

    path = BASE_DIR / "progress.json"
    if not path.is_file():
        raise FileNotFoundError(f"no base record at {path}; export a pretraining run with `editloop world export-base`")
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12]


def load_base(kind: str, device: str | None = None, dtype: str | None = None):
    return load_pipeline(base_model_dir(kind), kind, device=device, dtype=dtype)


def export_base(run_dir: Path, dest: Path = BASE_DIR) -> list[Path]:
    """Copy a finished pretraining run into `dest`, UNet and text encoder in fp16 (VAE stays fp32).

    Replaces what was there: one version of the base weights lives in the repository.
    """
    import shutil

    written = []
    for kind in ("t2i", "inpaint"):
        pipe = load_pipeline(run_dir / kind, kind, device="cpu", dtype="fp32")
        pipe.unet.to(torch.float16)
        pipe.text_encoder.to(torch.float16)
        tmp = dest / f"{kind}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(dest / kind, ignore_errors=True)
        tmp.replace(dest / kind)
        written.append(dest / kind)
    progress = run_dir / "progress.json"
    if progress.is_file():
        shutil.copy(progress, dest / "progress.json")
    return written
