"""Online GRPO for the inpainting editor: groups of the policy's own samples per edit, scored by the reward models
(through the reward services over gRPC, or in-process: reward_client.py), pushed toward the better ones of each group.

The policy is the editor's sampler made stochastic: DDIM with eta > 0 (eta = 1: DDPM's variance), so each step
x_{t-1} ~ N(mu_theta(x_t), sigma_t^2 I) has a log-likelihood (DDPO, Black et al., 2023, "Training Diffusion Models
with Reinforcement Learning"). One training step, as Flow-GRPO (Liu et al., 2025) and DanceGRPO (Xue et al., 2025)
do it for text-to-image:

1. `batch_size / group` edits drawn from (seed, "grpo", step) alone (a resumed run replays nothing), each sampled
   `group` times with the guided sampler, recording every x_t, x_{t-1} and log p_old(x_{t-1} | x_t).
2. Each sample scored by every weighted reward: a preference reward's score R, and the coherence reward's mean
   real-probability (with `coherence_weight`: an edit that breaks what lies outside the mask reads as generated
   there). Each reward's advantage relative to the group, (R - mean_group) / (std_group + 1e-4), then weighted and
   summed (rewards of different scales count as their weights say); a sample whose score was dropped (a reward
   request past its deadline) gets none.
3. On a `train_fraction` of the sampling steps (the same for the whole batch, drawn from the step's stream): the
   clipped policy-gradient loss max(-A ratio, -A clip(ratio, 1 - c, 1 + c)) with ratio = p_theta / p_old, plus
   `kl_weight` * KL(p_theta || p_ref) against the frozen start UNet, which for two Gaussians of one variance is
   ||mu_theta - mu_ref||^2 / (2 sigma_t^2) (mean over latent elements, as the log-likelihoods are). Gradients are
   accumulated step by step (one sampling step's graph in memory at a time), then one AdamW step; with `updates` > 1
   the batch is used again and the clip acts.

Guard rewards (`guard`) are scored on every batch but never enter the reward; the gate (run.py) refuses a candidate
whose held-out guard rewards or coherence fell more than `guard_drop` below the served model's (reward hacking: the
policy found what the trained rewards like and the others do not).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from editloop.addresses import is_host_port
from editloop.models.data import step_rng, to_uint8
from editloop.models.reward_kinds import kind_names, preference_names
from editloop.models.zoo import predicted_x0
from trainers.feedback.examples import make_example, upscale
from trainers.feedback.pefl import EditBatch, autocast, ddim, decode, guided_prediction, prepare
from trainers.feedback.reward_client import SCORERS, ClientPolicy, ScoreBatch, Scorer

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class AllScoresDropped(RuntimeError):
    """Every sample of a batch lost its reward (each request past its deadline after every retry)."""


@dataclass(frozen=True)
class GrpoConfig:
    group: int = 4  # samples per edit: the advantages are relative to the group
    eta: float = 1.0  # DDIM eta of the sampling policy (1: DDPM's variance; > 0 for a likelihood)
    clip: float = 1e-4  # PPO clip range of the likelihood ratio (Flow-GRPO's and DanceGRPO's)
    kl_weight: float = 0.04  # KL to the start model per trained step (Flow-GRPO's beta)
    train_fraction: float = 0.5  # the share of sampling steps whose log-likelihoods are trained (DanceGRPO's 0.6)
    updates: int = 1  # optimiser steps per sampled batch
    coherence_weight: float = 0.5  # the coherence reward's weight in r (0: off, preservation left to the gate)
    guard: tuple[str, ...] = ("alignment",)  # held-out rewards: scored, never trained on, checked at the gate
    guard_drop: float = 0.05  # the most a guard reward (sigmoid) or the coherence score may fall at the gate
    scorer: str = "auto"  # "services" (gRPC), "in-process", or "auto" (the services when the stack runs them)
    addresses: dict[str, str] = field(default_factory=dict)  # kind -> host:port (default: the running stack's)
    timeout: float = 30.0  # seconds per reward request
    retries: int = 3
    # sampling steps of a rollout (0: the inpainting stage's schedule steps; the instruction editor's default steps)
    sample_steps: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.group <= 64:
            raise ValueError(f"`grpo.group` must be in 2..64 (advantages are relative to a group), got {self.group}")
        for name, low, high in (("eta", 0.0, 1.0), ("train_fraction", 0.0, 1.0), ("guard_drop", 0.0, 1.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low < value <= high):
                raise ValueError(f"`grpo.{name}` must be in ({low}, {high}], got {value!r}")
        for name in ("clip", "kl_weight", "coherence_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"`grpo.{name}` must be a finite number >= 0, got {value!r}")
        if self.clip <= 0:
            raise ValueError(f"`grpo.clip` must be > 0, got {self.clip}")
        if not (isinstance(self.sample_steps, int) and 0 <= self.sample_steps <= 100):
            raise ValueError(f"`grpo.sample_steps` must be an integer in 0..100 (0: the model's own), "
                             f"got {self.sample_steps!r}")
        if not 1 <= self.updates <= 16:
            raise ValueError(f"`grpo.updates` must be in 1..16, got {self.updates}")
        for kind in self.guard:
            if kind not in preference_names():
                raise ValueError(f"`grpo.guard` names unknown reward {kind!r}; guard rewards: "
                                 f"{list(preference_names())} (coherence is always checked when it is weighted)")
        if self.scorer not in SCORERS:
            raise ValueError(f"`grpo.scorer` must be one of {list(SCORERS)}, got {self.scorer!r}")
        for kind, address in self.addresses.items():
            if kind not in kind_names():
                raise ValueError(f"`grpo.addresses` names unknown reward {kind!r}")
            if not is_host_port(str(address)):
                raise ValueError(f"`grpo.addresses[{kind!r}]` must be host:port, got {address!r}")
        ClientPolicy(self.timeout, self.retries)  # checks them

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GrpoConfig:
        data = dict(data)
        if "guard" in data:
            data["guard"] = tuple(data["guard"])
        return cls(**data)

    def reward_kinds(self, weights: dict[str, float]) -> list[str]:
        """What each batch is scored with: the weighted rewards, coherence when weighted, then the guards."""
        kinds = [k for k, w in weights.items() if w > 0]
        kinds += ["coherence"] if self.coherence_weight > 0 else []
        return kinds + [k for k in self.guard if k not in kinds]


def check_grpo(cfg: Any) -> None:  # a FeedbackConfig (loop.py imports this module)
    """What a GRPO run needs of the FeedbackConfig around it."""
    if cfg.grpo is None:
        raise ValueError("stage 'grpo' needs a `grpo` config")
    if cfg.batch_size % cfg.grpo.group:
        raise ValueError(f"`batch_size` ({cfg.batch_size}) must be a multiple of `grpo.group` ({cfg.grpo.group}): "
                         f"each edit is sampled `group` times")
    trained = [k for k in cfg.grpo.guard if cfg.reward_weights.get(k, 0) > 0]
    if trained:
        raise ValueError(f"`grpo.guard` reward {trained[0]!r} is also trained on (`reward_weights`); a guard must be "
                         f"held out")


@dataclass
class Rollout:
    """The sampled trajectories of one batch (no gradients)."""

    batch: EditBatch
    latents: list[torch.Tensor]  # x_t before each sampling step
    next_latents: list[torch.Tensor]  # x_{t-1} drawn at it
    log_probs: torch.Tensor  # (steps, N): log p_old(x_{t-1} | x_t)
    stds: list[torch.Tensor]  # sigma_t per step (a scalar tensor)
    timesteps: list[torch.Tensor]
    images: np.ndarray  # N,H,W,3 uint8
    sched: Any  # the DDIM schedule it was sampled with (the loss recomputes its steps on it)


def ddim_step(sched, out: torch.Tensor, t: torch.Tensor, x: torch.Tensor,
              eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of DDIM's step from x_t with the model output `out` (epsilon or v), as diffusers' DDIMScheduler
    computes it (Song et al., 2021, eq. 12)."""
    prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
    abar = sched.alphas_cumprod.to(x.device)
    a_t = abar[t.long()]
    a_prev = abar[prev.long()] if prev >= 0 else sched.final_alpha_cumprod.to(x.device)
    x0 = predicted_x0(sched, x, t, out)
    eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def predict(unet, x: torch.Tensor, t: torch.Tensor, batch: EditBatch, guidance: float) -> torch.Tensor:
    """The guided model output at (x, t), under bf16 autocast on CUDA, back in fp32 for the sampler's and the
    likelihood's arithmetic (a bf16 log-ratio would not resolve PPO's clip range)."""
    with autocast(x.device):
        return guided_prediction(unet, x, t, batch, guidance).float()


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) per example, averaged over its elements (DDPO's convention)."""
    return (-((x.float() - mean.float()) ** 2) / (2 * std.float() ** 2) - std.float().log() - LOG_SQRT_2PI
            ).mean(dim=tuple(range(1, x.dim())))


@torch.no_grad()
def rollout(pipe, batch: EditBatch, steps: int, guidance: float, eta: float,
            generator: torch.Generator) -> Rollout:
    """Sample `batch` with the stochastic guided sampler, keeping what the loss needs."""
    sched = ddim(pipe, steps)
    x = torch.randn(batch.source_latents.shape, generator=generator).to(batch.source_latents)
    x = x * sched.init_noise_sigma
    latents, nexts, log_probs, stds = [], [], [], []
    for t in sched.timesteps:
        mean, std = ddim_step(sched, predict(pipe.unet, x, t, batch, guidance), t, x, eta)
        noise = torch.randn(x.shape, generator=generator).to(x)
        nxt = mean + std * noise
        latents.append(x)
        nexts.append(nxt)
        log_probs.append(gaussian_log_prob(nxt, mean, std))
        stds.append(std)
        x = nxt
    images = to_uint8(decode(pipe, x))
    return Rollout(batch, latents, nexts, torch.stack(log_probs), stds, list(sched.timesteps), images, sched)


def weighted_advantages(scores: dict[str, np.ndarray], weights: dict[str, float], group: int) -> np.ndarray:
    """A = sum_k w_k * (each reward's own group-relative advantage) over the rewards weighted > 0: each reward is
    standardised within the group before the weights apply, so a Bradley-Terry score in the tens and a coherence
    probability count as their weights say (a sigmoid of a trained reward's score saturates at 0 or 1 and leaves a
    group nothing to compare). 0 for a sample any weighted reward lost."""
    kinds = [k for k, w in weights.items() if w > 0]
    scored = np.all([np.isfinite(scores[k]) for k in kinds], axis=0)
    total = np.zeros(len(scored), dtype=np.float64)
    for kind in kinds:
        total += weights[kind] * group_advantages(np.where(scored, scores[kind], np.nan), group)
    return np.where(scored, total, 0.0)


def group_advantages(rewards: np.ndarray, group: int, eps: float = 1e-4) -> np.ndarray:
    """(r - group mean) / (group std + eps) over each group's scored samples (consecutive runs of `group`); 0 for a
    sample without a score, and for every sample of a group with fewer than two scores."""
    out = np.zeros_like(rewards, dtype=np.float64)
    for lo in range(0, len(rewards), group):
        r = rewards[lo:lo + group]
        ok = np.isfinite(r)
        if ok.sum() < 2:
            continue
        mean, std = r[ok].mean(), r[ok].std()
        out[lo:lo + group][ok] = (r[ok] - mean) / (std + eps)
    return out


def clipped_objective(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate as a loss (mean over samples), and the share of samples whose ratio was clipped."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped).mean(), ((ratio - 1).abs() > clip).float().mean()


def trained_steps(rng: np.random.Generator, steps: int, fraction: float) -> list[int]:
    """Which sampling steps train this batch: round(fraction * steps) of them (at least one), sorted."""
    k = max(1, round(fraction * steps))
    return sorted(int(i) for i in rng.choice(steps, size=k, replace=False))


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(ref_mean, std^2)) per example, averaged over its elements."""
    return ((mean.float() - ref_mean.float()) ** 2).mean(dim=tuple(range(1, mean.dim()))) / (2 * std.float() ** 2)


def step_loss(mean: torch.Tensor, ref_mean: torch.Tensor, next_latents: torch.Tensor, old_log_prob: torch.Tensor,
              std: torch.Tensor, advantages: torch.Tensor, grpo: GrpoConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """One sampling step's loss from the policy's step mean (with gradients) and the reference's: the clipped
    objective on the sampled x_{t-1} + kl_weight * KL to the reference."""
    log_prob = gaussian_log_prob(next_latents, mean, std)
    objective, clipped = clipped_objective(log_prob, old_log_prob, advantages, grpo.clip)
    kl = kl_to_reference(mean, ref_mean, std)
    return objective + grpo.kl_weight * kl.mean(), {"kl": float(kl.mean().detach()), "clipped": float(clipped)}


def policy_loss(pipe, anchor, roll: Rollout, index: int, advantages: torch.Tensor, cfg,
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss at sampling step `index` of the rollout: clipped objective + kl_weight * KL to the anchor."""
    grpo, sched = cfg.grpo, roll.sched
    x, t, std = roll.latents[index], roll.timesteps[index], roll.stds[index]
    mean, _ = ddim_step(sched, predict(pipe.unet, x, t, roll.batch, cfg.guidance), t, x, grpo.eta)
    with torch.no_grad():
        ref_mean, _ = ddim_step(sched, predict(anchor, x, t, roll.batch, cfg.guidance), t, x, grpo.eta)
    return step_loss(mean, ref_mean, roll.next_latents[index], roll.log_probs[index], std, advantages, grpo)


def score_rollout(scorer: Scorer, kinds: list[str], roll: Rollout, examples: list) -> dict[str, np.ndarray]:
    batch = ScoreBatch(roll.images, [e.prompt for e in examples], np.stack([e.source for e in examples]),
                       np.stack([e.mask for e in examples]))
    return {kind: scorer.score(kind, batch) for kind in kinds}


def batch_advantages(scores: dict[str, np.ndarray], weights: dict[str, float], group: int, step: int,
                     device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """(the weighted group-relative advantages, which samples kept every weighted score); AllScoresDropped when
    none did."""
    scored = np.all([np.isfinite(scores[k]) for k, w in weights.items() if w > 0], axis=0)
    if not scored.any():
        raise AllScoresDropped(f"every one of the {len(scored)} samples of step {step + 1} lost its reward "
                               f"(requests past their deadline after every retry)")
    advantages = torch.tensor(weighted_advantages(scores, weights, group), dtype=torch.float32, device=device)
    return advantages, scored


def optimise(loss_at: Callable[[int], tuple[torch.Tensor, dict[str, float]]], chosen_steps: list[int], cfg,
             step: int, params, opt) -> dict[str, float]:
    """`cfg.grpo.updates` optimiser steps, each accumulating the loss of every chosen sampling step (one step's graph
    in memory at a time); the mean loss, KL and clipped share, and the last gradient norm."""
    from trainers.feedback.loop import Diverged

    parts: dict[str, list[float]] = {"loss": [], "kl": [], "clipped": []}
    for _ in range(cfg.grpo.updates):
        opt.zero_grad(set_to_none=True)
        for index in chosen_steps:
            loss, got = loss_at(index)
            if not torch.isfinite(loss):
                raise Diverged(f"grpo loss is {float(loss)} at step {step + 1}; the last good checkpoint is kept")
            (loss / len(chosen_steps)).backward()
            parts["loss"].append(float(loss.detach()))
            parts["kl"].append(got["kl"])
            parts["clipped"].append(got["clipped"])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    return {**{k: float(np.mean(v)) for k, v in parts.items()}, "grad_norm": float(grad_norm)}


def scores_record(scores: dict[str, np.ndarray], scored: np.ndarray, advantages: torch.Tensor,
                  grpo: GrpoConfig) -> dict[str, float]:
    """What a step records of its scores: dropped samples, the advantages' spread, each reward's raw mean (a
    preference reward's score, coherence's probability), guards named as such."""
    record: dict[str, float] = {"dropped": int((~scored).sum()), "advantage_spread": float(advantages.abs().mean())}
    for kind, values in scores.items():
        record[f"{'guard' if kind in grpo.guard else 'reward'}_{kind}"] = float(np.nanmean(values))
    return record


def grpo_step(scorer: Scorer) -> Callable[..., dict[str, float]]:
    """A training step for trainers.feedback.loop.train_feedback: (pipe, cfg, step, params, opt, anchor) -> record,
    `anchor` being the frozen start UNet (the KL's reference)."""

    def step_fn(pipe, cfg, step: int, params, opt, anchor) -> dict[str, Any]:
        grpo = cfg.grpo
        rng = step_rng(cfg.seed, "grpo", step)
        edits = cfg.batch_size // grpo.group
        chosen = [upscale(make_example(rng, cfg.tasks[(step * edits + i) % len(cfg.tasks)]), cfg.resolution)
                  for i in range(edits)]
        examples = [e for e in chosen for _ in range(grpo.group)]  # each edit `group` times, consecutively
        generator = torch.Generator("cpu").manual_seed(int(rng.integers(2**62)))
        pipe.unet.eval()
        roll = rollout(pipe, prepare(pipe, examples), grpo.sample_steps or cfg.schedule.steps, cfg.guidance,
                       grpo.eta, generator)
        weights = {**cfg.reward_weights, "coherence": grpo.coherence_weight}
        scores = score_rollout(scorer, grpo.reward_kinds(cfg.reward_weights), roll, examples)
        advantages, scored = batch_advantages(scores, weights, grpo.group, step, pipe.unet.device)
        chosen_steps = trained_steps(rng, len(roll.timesteps), grpo.train_fraction)
        pipe.unet.train()
        record = optimise(lambda index: policy_loss(pipe, anchor, roll, index, advantages, cfg), chosen_steps, cfg,
                          step, params, opt)
        return {**record, **scores_record(scores, scored, advantages, grpo)}

    return step_fn


def hacking_guard(metrics: dict[str, float], reference: dict[str, float], grpo: GrpoConfig,
                  against: str = "the served model") -> list[str]:
    """Reasons to refuse a GRPO candidate for reward hacking: a held-out guard reward, or the coherence score, fell
    more than `guard_drop` below `reference`'s on the gate's held-out edits."""
    why = []
    for key in [f"reward_{k}" for k in grpo.guard] + ["coherence"]:
        if key in metrics and key in reference and metrics[key] < reference[key] - grpo.guard_drop:
            why.append(f"held-out {key.removeprefix('reward_')} score {metrics[key]:.4f} fell more than "
                       f"{grpo.guard_drop} below {against}'s {reference[key]:.4f} (reward hacking guard)")
    return why
