"""One training loop for every reward model: AdamW, periodic held-out evaluation, early stopping,
checkpoints (model, optimizer, step, best score, RNG) and resume from the newest checkpoint.

Inside a distributed job (trainers/distributed.py) each process trains on its share of every global batch with
gradients averaged (DDP); rank 0 alone evaluates, checkpoints and reports progress."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from trainers.distributed import broadcast, data_parallel_loss, is_main, mean_over_ranks
from trainers.runs import save_checkpoint, throttled

T = TypeVar("T")


def shuffled_batches(examples: Sequence[T], batch_size: int, seed: int) -> Iterator[list[T]]:
    """An endless, seeded stream of batches: a new permutation each epoch, incomplete tails dropped."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(examples))
        for start in range(0, max(len(order) - batch_size + 1, 1), batch_size):
            yield [examples[i] for i in order[start:start + batch_size]]


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 1500
    lr: float = 3e-4
    weight_decay: float = 0.01
    eval_every: int = 100
    patience: int = 5  # evaluations without improvement before stopping
    checkpoint_every: int = 100
    seed: int = 0
    grad_clip: float = 1.0
    schedule: str = "constant"  # or "cosine": linear warm-up, then cosine decay to 0 at `steps`
    warmup: int = 0  # steps of linear warm-up, at most a quarter of `steps`

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"`schedule` must be 'constant' or 'cosine', got {self.schedule!r}")


def lr_factor(cfg: LoopConfig, step: int) -> float:
    """The multiplier on cfg.lr for optimizer step `step` (0-based)."""
    warmup = min(cfg.warmup, cfg.steps // 4)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(cfg.steps - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class LoopResult:
    best_score: float
    best_step: int
    steps_done: int
    stopped_early: bool
    history: list[dict[str, float]]


def best_model(model: nn.Module, run_dir: Path) -> nn.Module:
    """A copy of `model` holding the run's best weights (run_dir/best.pt, when an evaluation saved one)."""
    best = copy.deepcopy(model)
    best_path = run_dir / "best.pt"
    if best_path.is_file():
        best.load_state_dict(torch.load(best_path, weights_only=True, map_location="cpu"))
    return best.eval()


def train_loop(model: nn.Module, batches: Iterator[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
               eval_fn: Callable[[nn.Module], float], cfg: LoopConfig, run_dir: Path,
               progress: Callable[[int, int, dict[str, float]], None] | None = None) -> tuple[nn.Module, LoopResult]:
    """Train `model` in place; returns the best model (by eval_fn, higher is better) and the result.

    `batches` must be an endless, seeded iterator; on resume it is fast-forwarded to the saved step.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state: dict[str, Any] = {"step": 0, "best_score": float("-inf"), "best_step": 0, "bad_evals": 0,
                             "history": [], "config": asdict(cfg)}
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False, map_location="cpu")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"])
        for _ in range(state["step"]):
            next(batches)
    stopped = False
    main = is_main()
    progress = throttled(progress) if main else None
    step_loss = data_parallel_loss(model, loss_fn)
    while state["step"] < cfg.steps:
        model.train()
        loss = step_loss(next(batches))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, state["step"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        state["step"] += 1
        step = state["step"]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            if main:
                with torch.no_grad():
                    score = float(eval_fn(model))
            score = broadcast(score if main else None)
            state["history"].append({"step": step, "loss": mean_over_ranks(float(loss.detach())), "eval": score})
            if score > state["best_score"]:
                state.update(best_score=score, best_step=step, bad_evals=0)
                if main:
                    save_checkpoint(best_path, model.state_dict())
            else:
                state["bad_evals"] += 1
            if progress is not None:
                progress(step, cfg.steps, state["history"][-1])
            if state["bad_evals"] >= cfg.patience:
                stopped = True
        elif progress is not None:
            progress(step, cfg.steps, {"step": step, "loss": float(loss.detach())})
        if main and (step % cfg.checkpoint_every == 0 or stopped or step == cfg.steps):
            save_checkpoint(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                                   "rng": torch.get_rng_state()})
        if stopped:
            break
    best = best_model(model, run_dir) if main else copy.deepcopy(model).eval()
    if main:
        (run_dir / "history.json").write_text(json.dumps(state["history"], indent=1))
    return best, LoopResult(state["best_score"], state["best_step"], state["step"], stopped,
                              state["history"])
