"""Pair filtering in the style of InstructPix2Pix / UltraEdit, with how many pairs each filter keeps.

Three tests, each with a threshold:
- agreement: the source agrees with the source caption and the target with the target caption
  (InstructPix2Pix's CLIP image-caption similarity);
- direction: the target moved toward the target caption, relative to the source
  [a(tgt, tgt caption) - a(tgt, src caption)] - [a(src, tgt caption) - a(src, src caption)]
  (InstructPix2Pix's directional similarity, in agreement space);
- similarity: outside the edit region the target keeps the source (mean L1 at most `max_outside_l1`),
  and inside it something changed (mean L1 at least `min_inside_l1`), unless the edit covers everything.
The agreement a(image, scene) in [0, 1] comes from a scorer: the alignment reward model (sigmoid of its
score for the caption), or the world judge standing in for a strong vision-language model (the fraction
of the caption's attributes it reads in the image).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch

from editloop.models.data import to_tensor
from editloop.world.judge import judge
from editloop.world.metrics import compare
from editloop.world.scene import Scene
from trainers.align.pairs import Pairs

SCORERS = ("alignment", "judge")


class Scorer(Protocol):
    name: str

    def agreement(self, images: np.ndarray, scenes: list[Scene]) -> np.ndarray: ...


class JudgeScorer:
    """The world judge reads the image; agreement = the fraction of the scene's attributes it finds."""

    name = "judge"

    def agreement(self, images: np.ndarray, scenes: list[Scene]) -> np.ndarray:
        return np.array([compare(judge(img), scene).attribute_accuracy for img, scene in zip(images, scenes)])


class AlignmentScorer:
    """The alignment reward model: agreement = sigmoid(R_b(caption, image))."""

    name = "alignment"

    def __init__(self, rewards, batch: int = 256) -> None:  # trainers.feedback.rewards.RewardModels
        self.rewards = rewards
        self.batch = batch

    @torch.no_grad()
    def agreement(self, images: np.ndarray, scenes: list[Scene]) -> np.ndarray:
        from trainers.feedback.rewards import preference_scores

        out = []
        for i in range(0, len(images), self.batch):
            x = to_tensor(list(images[i : i + self.batch]))
            r = preference_scores(self.rewards, "alignment", x, [s.caption for s in scenes[i : i + self.batch]])
            out.append(torch.sigmoid(r).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


@dataclass(frozen=True)
class FilterConfig:
    min_agreement: float = 0.6
    min_direction: float = 0.0  # strictly above
    max_outside_l1: float = 0.05
    min_inside_l1: float = 0.02

    def __post_init__(self) -> None:
        for name in ("min_agreement", "max_outside_l1", "min_inside_l1"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`filter.{name}` must be in [0, 1], got {value}")


def region_l1(a: np.ndarray, b: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair mean |a - b| (0..1) inside and outside the edit region (NaN where a region is empty)."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=-1) / 255.0
    m = masks.astype(bool)
    inside = np.array([d[k].mean() if k.any() else np.nan for d, k in zip(diff, m)])
    outside = np.array([d[~k].mean() if (~k).any() else np.nan for d, k in zip(diff, m)])
    return inside, outside


def count_kinds(kinds: list[str], among: list[str]) -> dict[str, int]:
    """How many of `kinds` are each kind of `among` (0 for a kind of `among` that `kinds` lacks)."""
    return {k: kinds.count(k) for k in sorted(set(among))}


def filter_pairs(pairs: Pairs, scorer: Scorer, cfg: FilterConfig) -> tuple[np.ndarray, dict]:
    """A keep flag per pair, and the counts: passing each test alone and after each test in turn."""
    src_s, tgt_s = pairs.scenes("source"), pairs.scenes("target")
    a_src_src = scorer.agreement(pairs.sources, src_s)
    a_tgt_tgt = scorer.agreement(pairs.targets, tgt_s)
    a_tgt_src = scorer.agreement(pairs.targets, src_s)
    a_src_tgt = scorer.agreement(pairs.sources, tgt_s)
    inside, outside = region_l1(pairs.sources, pairs.targets, pairs.masks)
    tests = {
        "agreement": (a_src_src >= cfg.min_agreement) & (a_tgt_tgt >= cfg.min_agreement),
        "direction": ((a_tgt_tgt - a_tgt_src) - (a_src_tgt - a_src_src)) > cfg.min_direction,
        "similarity": np.where(np.isnan(outside), True, outside <= cfg.max_outside_l1)
        & np.where(np.isnan(inside), True, inside >= cfg.min_inside_l1),
    }
    keep = np.ones(len(pairs), dtype=bool)
    counts: dict = {"scorer": scorer.name, "config": asdict(cfg), "total": len(pairs), "passes": {}, "after": {}}
    for name, ok in tests.items():
        counts["passes"][name] = int(ok.sum())
        keep &= ok
        counts["after"][name] = int(keep.sum())
    counts["kept"] = int(keep.sum())
    counts["kept_per_kind"] = count_kinds([k for k, f in zip(pairs.kinds, keep) if f], pairs.kinds)
    return keep, counts
