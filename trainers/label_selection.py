"""Active selection: which candidate sets are worth an annotator's time.

A best/worst answer teaches the aesthetic reward most where the reward cannot yet tell the images of a set apart
(its Bradley-Terry scores are close, so the answer is uncertain under the model) and where the images really differ
(three near-twins carry little signal whatever the answer). `set_priorities` scores each set on both, as ranks
among the sets offered, and `choose_sets` keeps the best `k`:
- uncertainty: mean over the set's pairs of 1 - |2 sigmoid(r_i - r_j) - 1|, with r the reward's scores (1 when
  the model is indifferent, 0 when it is sure);
- diversity: mean absolute pixel difference between the set's images (in [0, 1]).
The priority is the mean of the two ranks (each in [0, 1]); ties keep the sets' order. Without a promoted reward,
uncertainty is unknown and diversity alone ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SELECTIONS = ("random", "active")


def check_selection(selection: str, field: str = "selection") -> None:
    if selection not in SELECTIONS:
        raise ValueError(f"`{field}` must be one of {', '.join(SELECTIONS)}, got {selection!r}")


def pair_uncertainty(scores: np.ndarray) -> float:
    """Mean over pairs of 1 - |2 sigmoid(r_i - r_j) - 1|: how little the reward prefers one image of a pair."""
    i, j = np.triu_indices(len(scores), k=1)
    p = 1.0 / (1.0 + np.exp(-(scores[i] - scores[j])))
    return float(np.mean(1.0 - np.abs(2.0 * p - 1.0)))


def diversity(images: np.ndarray) -> float:
    """Mean absolute difference between the set's images (N,H,W,3 uint8), over pairs, in [0, 1]."""
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    i, j = np.triu_indices(len(images), k=1)
    return float(np.mean(np.abs(flat[i] - flat[j])))


def ranks01(values: Sequence[float]) -> np.ndarray:
    """Ranks scaled to [0, 1] (the largest value gets 1); one value gets 1."""
    order = np.argsort(np.argsort(np.asarray(values), kind="stable"), kind="stable")
    return order / max(len(values) - 1, 1) if len(values) > 1 else np.ones(1)


@torch.no_grad()
def reward_scores(rewards, images: np.ndarray, prompt: str, source: np.ndarray | None = None,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """The aesthetic reward's scores of one set's images (N,H,W,3 uint8) under its prompt (and the edit's source
    and mask, for a reward trained with them)."""
    from editloop.models.data import edit_context, to_tensor
    from trainers.feedback.rewards import preference_scores

    n, h, w = images.shape[:3]
    src, msk = edit_context([source] * n, [mask] * n, h, w)
    return preference_scores(rewards, "aesthetic", to_tensor(list(images)), [prompt] * n, src, msk
                             ).flatten().float().numpy()


def set_priorities(sets: Sequence[np.ndarray], prompts: Sequence[str], rewards=None,
                   contexts: Sequence[tuple[np.ndarray | None, np.ndarray | None]] | None = None
                   ) -> list[dict[str, float]]:
    """Per set: uncertainty (None without a reward), diversity and the priority (mean of their ranks)."""
    div = [diversity(images) for images in sets]
    contexts = contexts or [(None, None)] * len(sets)
    unc = ([pair_uncertainty(reward_scores(rewards, images, prompt, *ctx)) for images, prompt, ctx in
            zip(sets, prompts, contexts)] if rewards is not None else None)
    priority = ranks01(div) if unc is None else (ranks01(div) + ranks01(unc)) / 2.0
    return [{"uncertainty": None if unc is None else round(unc[k], 4), "diversity": round(div[k], 4),
             "priority": round(float(priority[k]), 4)} for k in range(len(sets))]


def choose_sets(priorities: Sequence[dict[str, float]], k: int, selection: str, seed: int) -> list[int]:
    """Indices of the `k` sets to push: the highest priorities ("active") or a seeded draw ("random")."""
    check_selection(selection)
    k = min(k, len(priorities))
    if selection == "random":
        return sorted(np.random.default_rng(seed).choice(len(priorities), size=k, replace=False).tolist())
    order = sorted(range(len(priorities)), key=lambda i: -priorities[i]["priority"])
    return sorted(order[:k])
