"""Pieces every pretraining stage shares: device set-up, LR warm-up, EMA, checkpoint cadence."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch

from editloop.models.zoo import pick_device, pick_dtype
from trainers.distributed import average_gradients
from trainers.pretrain.config import PretrainConfig


def setup_device(cfg: PretrainConfig) -> tuple[torch.device, torch.dtype]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    return device, pick_dtype(device, cfg.dtype)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; full precision on CPU."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: int,
           final_fraction: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to `final_fraction` of `base_lr` at step `total`.

    A function of the step alone, so a resumed (or lengthened) run continues the same curve.
    """
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        lr = base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class EMA:
    """Exponential moving average of parameters, with the usual early-step warm-up of the decay."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        # one fused launch per op for all tensors (the same arithmetic as a loop of mul_/add_; hundreds of small
        # kernels fewer per step on a GPU)
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, [p.detach().float() for p in self.params], alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> list[torch.Tensor]:
        return [s.cpu() for s in self.shadow]

    def load_state_dict(self, shadow: list[torch.Tensor]) -> None:
        self.shadow = [s.to(p.device).float() for s, p in zip(shadow, self.params)]


def should_checkpoint(step: int, total: int, every: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


def guarded_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter], ema: EMA,
                 step: int, label: str) -> None:
    """One optimiser step (gradients clipped to norm 1) and the EMA update; a non-finite loss raises first,
    so the last good checkpoint is what remains."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{label} loss is {loss.item()} at step {step}; last good checkpoint kept")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(params)  # a data-parallel job (trainers/distributed.py): the global batch's gradient
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    ema.update(step)
