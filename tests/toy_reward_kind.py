"""A fourth reward kind, for tests/test_reward_kinds.py: `sharpness`, a preference reward that learns to prefer
a world render to the same render blurred. Everything the kind needs is in this one file: its kernel entry (the
model family, for the services, the CLI and the registry) and its trainer (data, training, evaluation, the
chance floor's units, `editloop eval reward`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from editloop.models.data import to_tensor
from editloop.models.reward_kinds import RewardKind, register
from editloop.world import render, sample_scene
from trainers.reward.kinds import KindTrainer, register_trainer
from trainers.reward.loop import shuffled_batches, train_loop

NAME = "sharpness"


@dataclass(frozen=True)
class SharpPair:
    sharp: np.ndarray
    blurred: np.ndarray
    caption: str


def sharp_pairs(n: int, seed: int) -> list[SharpPair]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        image = render(scene)
        blurred = gaussian_filter(image.astype(np.float32), sigma=(1.5, 1.5, 0)).round().astype(np.uint8)
        out.append(SharpPair(image, blurred, scene.caption))
    return out


def margins(model, tokenizer, pairs: list[SharpPair]) -> torch.Tensor:
    tok = tokenizer([p.caption for p in pairs] * 2, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt")
    scores = model(to_tensor([p.sharp for p in pairs] + [p.blurred for p in pairs]), tok.input_ids,
                   tok.attention_mask)
    return scores[:len(pairs)] - scores[len(pairs):]


@torch.no_grad()
def accuracy(model, tokenizer, pairs: list[SharpPair]) -> float:
    model.eval()
    return float((margins(model, tokenizer, pairs) > 0).float().mean())


def _data(sessions, store, settings, cfg) -> dict:
    return {"train": sharp_pairs(64, cfg.seed), "select": sharp_pairs(16, 20_000 + cfg.seed),
            "eval": sharp_pairs(32, 10_000 + cfg.seed),
            "lineage": {"source": "world renders against themselves blurred (sigma 1.5)", "seed": cfg.seed}}


def _train(model, tokenizer, data: dict, cfg, run_dir, progress):
    def loss_fn(m, batch: list[SharpPair]) -> torch.Tensor:
        return -F.logsigmoid(margins(m, tokenizer, batch)).mean()

    return train_loop(model, shuffled_batches(data["train"], cfg.batch_size, cfg.seed), loss_fn,
                      lambda m: accuracy(m, tokenizer, data["select"]), cfg.loop(), run_dir, progress)


def _evaluate(model, tokenizer, data: dict) -> tuple[float, dict[str, float]]:
    acc = accuracy(model, tokenizer, data["eval"])
    return acc, {"sharp_accuracy": acc}


def _floor(score: float, data: dict, model) -> tuple[int, int, str]:
    units = len(data["eval"])
    return int(round(score * units)), units, "held-out pairs"


def _held_out(model, tokenizer, sessions, store, settings, n: int | None) -> tuple[str, dict]:
    return "world-sharpness-900000", {"accuracy": accuracy(model, tokenizer, sharp_pairs(n or 32, 900_000))}


register(RewardKind(NAME, "preference", "conv", "prefers a render to the same render blurred"))
register_trainer(KindTrainer(NAME, _data, _train, _evaluate, _floor, _held_out))
