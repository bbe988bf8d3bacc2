"""The reward models feedback learning optimises against: loaded by path, frozen, differentiable in
their input. Aesthetic and alignment give one score per image; coherence a per-pixel real/fake map."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from editloop.models.reward import CoherenceReward, PreferenceReward, load_reward
from editloop.models.reward_kinds import is_coherence
from trainers.reward.aesthetic import score


@dataclass
class RewardModels:
    preference: dict[str, tuple[PreferenceReward, object]] = field(default_factory=dict)  # kind -> (model, tok)
    coherence: CoherenceReward | None = None
    versions: dict[str, str] = field(default_factory=dict)
    # kind -> (mean, std) of R on reference images: Bradley-Terry scores have no fixed offset or scale, and
    # -log sigmoid(R) stops pushing once R is large, so the losses see (R - mean) / std (see `calibrate`)
    scale: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to(self, device: torch.device) -> RewardModels:
        for model, _ in self.preference.values():
            model.to(device)
        if self.coherence is not None:
            self.coherence.to(device)
        return self


def load_rewards(paths: dict[str, Path], versions: dict[str, str] | None = None) -> RewardModels:
    """Reward directories by kind; each must be of the kind it is given as (refused otherwise)."""
    out = RewardModels(versions=dict(versions or {}))
    for kind, path in paths.items():
        _, model, tokenizer = load_reward(path, kind)
        model.requires_grad_(False).eval()
        if is_coherence(kind):
            out.coherence = model
        else:
            out.preference[kind] = (model, tokenizer)
    return out


def preference_scores(rewards: RewardModels, kind: str, images: torch.Tensor, prompts: list[str],
                      source: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """R_kind(c, x) for images in [-1, 1], with gradients w.r.t. the images. The edit's source image and mask
    (N,3,H,W in [-1, 1]; N,1,H,W) reach a reward trained with sources (`reads_source`) and no other."""
    model, tokenizer = rewards.preference[kind]
    if not (model.config.reads_source and source is not None):
        return score(model, tokenizer, images.float(), prompts)
    return score(model, tokenizer, images.float(), prompts, source.float(), mask.float())


@torch.no_grad()
def calibrate(rewards: RewardModels, images: torch.Tensor, prompts: list[str], source: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> dict[str, tuple[float, float]]:
    """Mean and std of each preference reward over reference images (the task's clean sources): afterwards a
    normalised score of 0 means "as good as the references", and the loss keeps pushing below that."""
    for kind in rewards.preference:
        r = preference_scores(rewards, kind, images, prompts, source, mask)
        rewards.scale[kind] = (float(r.mean()), float(r.std().clamp(min=1e-3)))
    return rewards.scale


def normalised(rewards: RewardModels, kind: str, scores: torch.Tensor) -> torch.Tensor:
    mean, std = rewards.scale.get(kind, (0.0, 1.0))
    return (scores - mean) / std


def reward_losses(rewards: RewardModels, weights: dict[str, float], images: torch.Tensor, prompts: list[str],
                  example_scale: torch.Tensor | None = None, source: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_k w_k * mean_i(s_i * -log sigmoid(R_k(c_i, x_i))) over the preference rewards (s_i = 1 unless
    `example_scale` gives one per example, e.g. per task), and each reward's mean score."""
    total = images.new_zeros(())
    scale = None if example_scale is None else example_scale.to(images.device, torch.float32)
    scores: dict[str, float] = {}
    for kind, weight in weights.items():
        if kind not in rewards.preference:
            raise ValueError(f"reward `{kind}` is weighted but not loaded (loaded: {sorted(rewards.preference)})")
        r = normalised(rewards, kind, preference_scores(rewards, kind, images, prompts, source, mask))
        per_example = -F.logsigmoid(r)
        if scale is not None:
            per_example = per_example * scale
        total = total + weight * per_example.mean()
        scores[f"reward_{kind}"] = float(r.detach().mean())
    return total, scores
