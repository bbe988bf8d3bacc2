"""Coherence reward R_g: which pixels look generated? Per-pixel BCE, real vs inpainted.

Examples are pasted composites: a world render, a mask (an object's cell or a random box), the
inpainting model's output inside the mask and the original pixels outside it, so the only
generated pixels are the masked ones. Target 1 = real, 0 = generated. Held-out metric: per-pixel
ROC AUC (the probability that a random real pixel scores above a random generated one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from editloop.models.data import to_tensor
from editloop.models.evaluate import inpaint
from editloop.models.reward import CoherenceReward
from editloop.world import cell_mask, render, sample_scene
from editloop.world.render import sample_quality
from trainers.reward.loop import LoopConfig, LoopResult, shuffled_batches, train_loop


@dataclass(frozen=True)
class CoherenceExample:
    image: np.ndarray  # HxWx3 uint8 composite
    generated: np.ndarray  # HxW {0, 1}: 1 where the pixel came from the inpainting model


def random_box(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    h, w = rng.integers(10, 28, size=2)
    y, x = rng.integers(0, size - h), rng.integers(0, size - w)
    mask = np.zeros((size, size), np.uint8)
    mask[y:y + h, x:x + w] = 1
    return mask


def coherence_examples(pipe, n: int, seed: int, steps: int = 20, batch: int = 32) -> list[CoherenceExample]:
    """`n` composites from the inpainting pipeline `pipe` (object cells and random boxes, half each)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    sources = np.stack([render(s, sample_quality(rng, len(s.objects), q=float(rng.uniform(0, 0.5)))) for s in scenes])
    masks = np.stack([cell_mask(s.objects[0].position) if i % 2 == 0 else random_box(rng)
                      for i, s in enumerate(scenes)]).astype(np.uint8)
    outputs = inpaint(pipe, sources, masks, [s.caption for s in scenes], seed, steps=steps, batch=batch)
    composites = np.where(masks[..., None] > 0, outputs, sources).astype(np.uint8)
    return [CoherenceExample(c, m) for c, m in zip(composites, masks)]


def _tensors(batch: list[CoherenceExample], model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, per-pixel "real" labels) on the model's device (examples are kept as arrays on the CPU)."""
    device = next(model.parameters()).device
    images = to_tensor([e.image for e in batch])
    real = torch.from_numpy(1.0 - np.stack([e.generated for e in batch]).astype(np.float32))[:, None]
    return images.to(device), real.to(device)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mean rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U), ties averaged."""
    pos, neg = labels == 1, labels == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def pixel_auc(model: CoherenceReward, examples: list[CoherenceExample], batch_size: int = 64) -> float:
    model.eval()
    scores, labels = [], []
    for start in range(0, len(examples), batch_size):
        images, real = _tensors(examples[start:start + batch_size], model)
        scores.append(model(images).flatten().cpu().numpy())
        labels.append(real.flatten().cpu().numpy())
    return auc(np.concatenate(scores), np.concatenate(labels))


@torch.no_grad()
def example_wins(model: CoherenceReward, examples: list[CoherenceExample], batch_size: int = 64) -> tuple[int, int]:
    """(examples whose own pixel AUC is above 0.5, examples with both kinds of pixel): the independent units of
    the chance floor (trainers.reward.run.chance_floor)."""
    model.eval()
    wins = units = 0
    for start in range(0, len(examples), batch_size):
        images, real = _tensors(examples[start:start + batch_size], model)
        for score, label in zip(model(images).cpu().numpy(), real.cpu().numpy()):
            value = auc(score.flatten(), label.flatten())
            if value == value:  # NaN: the example has one kind of pixel only
                units += 1
                wins += int(value > 0.5)
    return wins, units


def train_coherence(model: CoherenceReward, train: list[CoherenceExample], held_out: list[CoherenceExample],
                    cfg: LoopConfig, run_dir: Path, batch_size: int = 32,
                    progress=None) -> tuple[CoherenceReward, LoopResult]:
    def loss_fn(m: CoherenceReward, batch: list[CoherenceExample]) -> torch.Tensor:
        images, real = _tensors(batch, m)
        # generated pixels are a minority: weight them so both classes count equally
        balance = (real > 0.5).float().mean() / (real <= 0.5).float().mean().clamp_min(1e-3)
        weight = torch.where(real > 0.5, 1.0, balance)
        return F.binary_cross_entropy_with_logits(m(images), real, weight=weight)

    batches = shuffled_batches(train, batch_size, cfg.seed)
    return train_loop(model, batches, loss_fn, lambda m: pixel_auc(m, held_out), cfg, run_dir, progress)


# ---- the coherence kind's trainer (trainers/reward/kinds.py): composites inpainted by the served editor ----

def _data(sessions, store, settings, cfg) -> dict:
    from editloop.models.zoo import load_pipeline

    pipe = load_pipeline(settings.editor_model, "inpaint", device=settings.device)
    return {"train": coherence_examples(pipe, cfg.coherence_train, cfg.seed, cfg.coherence_steps),
            "eval": coherence_examples(pipe, cfg.coherence_eval, 10_000 + cfg.seed, cfg.coherence_steps),
            # chooses the best checkpoint, so the eval composites' score (the gate's, the floor's) is not chosen on
            "select": coherence_examples(pipe, max(cfg.coherence_eval // 2, 1), 20_000 + cfg.seed,
                                         cfg.coherence_steps),
            "lineage": {"source": f"inpainted composites by {settings.editor_model.name}",
                        "train_examples": cfg.coherence_train, "seed": cfg.seed}}


def _train(model, tokenizer, data: dict, cfg, run_dir: Path, progress) -> tuple[object, LoopResult]:
    return train_coherence(model, data["train"], data["select"], cfg.loop(), run_dir,
                           min(cfg.batch_size, 32), progress)


def _evaluate(model, tokenizer, data: dict) -> tuple[float, dict[str, float]]:
    value = pixel_auc(model, data["eval"])
    return value, {"pixel_auc": value}


def _floor(score: float, data: dict, model) -> tuple[int, int, str]:
    wins, units = example_wins(model, data["eval"])
    return wins, units, "held-out composites (pixel AUC above 0.5)"


def _held_out(model, tokenizer, sessions, store, settings, n: int | None) -> tuple[str, dict]:
    from trainers.evaluation.rewards import ALIGNMENT_SEED, coherence_auc

    return f"world-coherence-{ALIGNMENT_SEED}", coherence_auc(model, settings.editor_model, n or 32, 20)


def _register() -> None:
    from trainers.reward.kinds import KindTrainer, register_trainer

    register_trainer(KindTrainer("coherence", _data, _train, _evaluate, _floor, _held_out))


_register()
