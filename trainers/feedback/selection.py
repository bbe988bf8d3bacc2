"""Checkpoint selection (early stopping after the fact) for a feedback stage.

Feedback fine-tuning helps for a while and then drifts: on the Shapes World the regulariser-only run
is better than its base after 60 steps and far worse after 120, while the reward's score keeps rising
(BENCHMARKS.md, "On the trailing base"). So a stage can keep an EMA snapshot every `snapshot_every`
steps; when training ends each snapshot is loaded in turn and scored on a validation set by a
caller-given measure (the gate's reviewers' side-by-side verdicts against the served model, or the
rewards' score), and the best one is what the stage hands to its gate. Ties go to the earliest
snapshot (the least drift). Scores are written to <run dir>/selection.json as they are measured, so a
worker lost during selection does not measure a snapshot twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers.runs import save_checkpoint

SNAPSHOTS = "snapshots"


@dataclass(frozen=True)
class Selection:
    step: int  # the chosen snapshot's training step
    scores: dict[int, float]  # step -> validation score (higher is better)


def snapshot_path(run_dir: Path, step: int) -> Path:
    return run_dir / SNAPSHOTS / f"step-{step:06d}.pt"


def save_snapshot(run_dir: Path, step: int, weights: list[torch.Tensor]) -> Path:
    """Write the EMA weights of `step` (the trainable parameters, in their order) atomically."""
    path = snapshot_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"step": step, "weights": [w.detach().cpu() for w in weights]})
    return path


def saved_snapshots(run_dir: Path) -> list[int]:
    """Steps with a snapshot on disk, in order."""
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / SNAPSHOTS).glob("step-*.pt"))


@torch.no_grad()
def load_snapshot(run_dir: Path, step: int, params: list[torch.nn.Parameter]) -> None:
    weights = torch.load(snapshot_path(run_dir, step), weights_only=True)["weights"]
    if len(weights) != len(params):
        raise ValueError(f"snapshot of step {step} holds {len(weights)} tensors; the model trains {len(params)}")
    for p, w in zip(params, weights):
        p.copy_(w.to(p.device, p.dtype))


def select_snapshot(run_dir: Path, params: list[torch.nn.Parameter], score: Callable[[int], float]) -> Selection:
    """Score every saved snapshot with `score(step)` (called with that snapshot loaded into `params`) and
    leave the best one loaded."""
    steps = saved_snapshots(run_dir)
    if not steps:
        raise ValueError(f"no snapshots under {run_dir / SNAPSHOTS} to select from")
    record = run_dir / "selection.json"
    scores = {int(k): float(v) for k, v in json.loads(record.read_text()).items()} if record.is_file() else {}
    for step in steps:
        if step in scores:
            continue
        load_snapshot(run_dir, step, params)
        scores[step] = float(score(step))
        tmp = record.with_suffix(".tmp")  # written whole, then renamed: a crash never leaves a torn record
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(scores.items())}, indent=1))
        tmp.replace(record)
    best = max(steps, key=lambda s: (scores[s], -s))
    load_snapshot(run_dir, best, params)
    return Selection(best, {s: scores[s] for s in steps})
