"""Held-out evaluation of an inpainting model after feedback learning.

Samples the model through its diffusers pipeline on held-out examples and seeds, then measures what
the platform can measure in production (the reward models' mean scores, the world judge's success)
and, for benchmarks, what only the simulated world knows (the annotators' utility, GSB verdicts).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from editloop.labels.stats import GSB
from editloop.models.data import edit_context, to_tensor
from editloop.models.evaluate import inpaint
from editloop.world.annotators import SimulatedAnnotator, utility
from editloop.world.metrics import masked_l1
from trainers.feedback.examples import FeedbackExample, success_rate
from trainers.feedback.rewards import RewardModels, preference_scores

SAME_MARGIN = 0.1  # utility difference below which an annotator answers "same"


@dataclass
class Samples:
    images: np.ndarray  # N,H,W,3 uint8
    steps: int
    seconds: float


def sample(pipe, examples: list[FeedbackExample], seed: int, steps: int, guidance: float = 4.0,
           batch: int = 32) -> Samples:
    t0 = time.perf_counter()
    images = inpaint(pipe, np.stack([e.source for e in examples]), np.stack([e.mask for e in examples]),
                     [e.prompt for e in examples], seed, steps, guidance, batch)
    return Samples(images, steps, time.perf_counter() - t0)


@torch.no_grad()
def image_rewards(rewards: RewardModels, images: np.ndarray, examples: list[FeedbackExample], batch: int = 64
                  ) -> dict[str, np.ndarray]:
    """sigmoid(R_k) of each image per preference reward (the probability the reward prefers the image to a neutral
    one), each scored for its example's prompt (and, by a reward that reads sources, with its source and mask)."""
    scores: dict[str, list[torch.Tensor]] = {kind: [] for kind in rewards.preference}
    for i in range(0, len(images), batch):  # each chunk converted once, scored by every reward
        part = examples[i:i + batch]
        chunk = to_tensor(list(images[i:i + batch]))
        source, mask = edit_context([e.source for e in part], [e.mask for e in part], *images.shape[1:3])
        for kind, kept in scores.items():
            kept.append(torch.sigmoid(preference_scores(rewards, kind, chunk, [e.prompt for e in part], source, mask)))
    return {kind: torch.cat(kept).cpu().numpy() for kind, kept in scores.items()}


def mean_rewards(rewards: RewardModels, images: np.ndarray, examples: list[FeedbackExample], batch: int = 64
                 ) -> dict[str, float]:
    """The mean of image_rewards per reward."""
    return {kind: float(v.mean()) for kind, v in image_rewards(rewards, images, examples, batch).items()}


def feedback_score(reward_means: dict[str, float]) -> float:
    """The gate's single number: the mean of the preference rewards' mean sigmoid scores."""
    return float(np.mean(list(reward_means.values())))


def evaluate_samples(samples: Samples, examples: list[FeedbackExample], rewards: RewardModels) -> dict[str, float]:
    """The gate's numbers: the preference rewards' means and their mean (feedback_score), judged success, L1 outside
    the mask (0..1; preservation), and with a coherence reward loaded its mean real-probability."""
    means = mean_rewards(rewards, samples.images, examples)
    out = {"feedback_score": feedback_score(means), **{f"reward_{k}": v for k, v in means.items()},
           "success": success_rate(samples.images, examples), "steps": samples.steps,
           "seconds_per_image": samples.seconds / len(examples),
           "l1_outside": outside_l1(samples.images, examples)}
    if rewards.coherence is not None:
        out["coherence"] = coherence_mean(rewards, samples.images)
    return out


def outside_l1(images: np.ndarray, examples: list[FeedbackExample]) -> float:
    """Mean over examples of masked_l1: |edit - source| on 0..1 outside each example's mask (what it should keep)."""
    return float(np.mean([masked_l1(image, ex.source, ex.mask) for image, ex in zip(images, examples)]))


@torch.no_grad()
def coherence_scores(rewards: RewardModels, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The coherence reward's real-probability of each image (what its service's Score answers)."""
    model = rewards.coherence
    device = next(model.parameters()).device
    got = [model.summary(model(to_tensor(list(images[i:i + batch])).to(device))) for i in range(0, len(images), batch)]
    return torch.cat(got).float().cpu().numpy()


def coherence_mean(rewards: RewardModels, images: np.ndarray, batch: int = 64) -> float:
    """The mean of coherence_scores."""
    return float(coherence_scores(rewards, images, batch).mean())


def utilities(images: np.ndarray, examples: list[FeedbackExample], weights: dict[str, float]) -> np.ndarray:
    return np.array([utility(img, ex.target, weights) for img, ex in zip(images, examples)])


def utility_by_task(u: np.ndarray, tasks: list[str]) -> dict[str, float]:
    """Mean utility per task (the examples' tasks, in the order of `u`)."""
    names = np.array(tasks)
    return {t: float(u[names == t].mean()) for t in sorted(set(tasks))}


def panel_verdicts(u_a: np.ndarray, u_b: np.ndarray, annotators: list[SimulatedAnnotator]) -> list[list[str]]:
    """Each pair's side-by-side verdicts of A against B, one per annotator: "same" when the utilities differ
    by less than SAME_MARGIN, else the annotator's noisy Bradley-Terry choice (annotator by annotator, so the
    annotators' noise is drawn in a fixed order)."""
    verdicts: list[list[str]] = [[] for _ in range(len(u_a))]
    for annotator in annotators:
        for i, (a, b) in enumerate(zip(u_a, u_b)):
            if abs(a - b) < SAME_MARGIN:
                verdicts[i].append("same")
            else:
                verdicts[i].append("good" if annotator.prefers(float(a), float(b)) else "bad")
    return verdicts


def panel_gsb(u_a: np.ndarray, u_b: np.ndarray, annotators: list[SimulatedAnnotator]) -> GSB:
    """Every annotator's verdict on every pair of A against B (panel_verdicts), counted."""
    counts = Counter(v for pair in panel_verdicts(u_a, u_b, annotators) for v in pair)
    return GSB(counts["good"], counts["same"], counts["bad"])
