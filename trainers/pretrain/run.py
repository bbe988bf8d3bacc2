"""`editloop world pretrain`: VAE -> text-to-image -> inpainting, resumable stage by stage."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from trainers.pretrain.config import PretrainConfig
from trainers.pretrain.diffusion import train_diffusion
from trainers.pretrain.text import train_text
from trainers.pretrain.vae import train_vae


def _progress_path(cfg: PretrainConfig) -> Path:
    return cfg.out / "progress.json"


def read_progress(cfg: PretrainConfig) -> dict[str, Any]:
    path = _progress_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_progress(cfg: PretrainConfig, progress: dict[str, Any]) -> None:
    tmp = _progress_path(cfg).with_suffix(".tmp")
    tmp.write_text(json.dumps(progress, indent=2))
    tmp.replace(_progress_path(cfg))


def _requested_steps(cfg: PretrainConfig, stage: str) -> int:
    return {"vae": cfg.vae_steps, "text": cfg.text_steps, "t2i": cfg.t2i_steps, "inpaint": cfg.inpaint_steps}[stage]


def _finished(progress: dict[str, Any], stage: str, cfg: PretrainConfig) -> bool:
    """Done, and (for diffusion stages) trained at least as long as now asked; the VAE stops at its gate."""
    record = progress.get(stage, {})
    if not record.get("done"):
        return False
    return stage == "vae" or record.get(f"{stage}_steps", 0) >= _requested_steps(cfg, stage)


def _invalidate_after(cfg: PretrainConfig, progress: dict[str, Any], stage: str) -> None:
    """A stage that (re)trains makes every later stage stale: they start again from the new weights."""
    from trainers.pretrain.config import STAGES

    for later in STAGES[STAGES.index(stage) + 1 :]:
        if later in progress:
            print(f"{later}: will retrain ({stage} changes)")
            progress.pop(later)
            (cfg.out / "checkpoints" / f"{later}.pt").unlink(missing_ok=True)
    _write_progress(cfg, progress)


def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run the configured stages; a finished stage is skipped, an interrupted one resumes."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    progress = read_progress(cfg)
    for stage in cfg.stages:
        if _finished(progress, stage, cfg):
            print(f"{stage}: done already ({cfg.out / stage}); skipping")
            continue
        _invalidate_after(cfg, progress, stage)
        started = time.time()
        final_dir = cfg.out / stage
        partial = cfg.out / f"{stage}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        ckpt = cfg.out / "checkpoints" / f"{stage}.pt"
        if stage == "vae":
            metrics = train_vae(cfg, partial, ckpt)
        elif stage == "text":
            metrics = train_text(cfg, partial, ckpt)
        else:
            init = cfg.out / "t2i" if stage == "inpaint" else None
            metrics = train_diffusion(cfg, stage, cfg.out / "vae", init, partial, ckpt)
        shutil.rmtree(final_dir, ignore_errors=True)
        partial.replace(final_dir)  # the finished directory appears whole or not at all
        progress[stage] = {"done": True, "seconds_this_invocation": round(time.time() - started, 1), **metrics,
                           "config": cfg.to_dict()}
        _write_progress(cfg, progress)
        print(f"{stage}: {metrics}")
    return progress
