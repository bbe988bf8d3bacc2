"""The adversarial stage: the coherence model R_g, trained online as the discriminator.

Generator side: -log sigmoid(R_g(x0)) over the regenerated (masked) pixels, added to the reward losses.
Discriminator side: per-pixel BCE on composites (the generator's x0 pasted into the source inside the
mask: those pixels fake, the rest real) and on the untouched sources (all real), the same loss the
coherence reward was trained with.

Stabilisers (each a field of AdversarialConfig, tested in tests/test_feedback.py):
- warm-up: the first `warmup_steps` generator steps use the rewards only, while the discriminator
  already trains, so the generator never chases an untrained critic;
- update ratio: one discriminator update every `d_every` generator steps;
- a separate, smaller learning rate for the discriminator and gradient-norm clipping for both;
- one-sided label smoothing: real pixels target `real_label` (< 1), as in Salimans et al. (2016);
- class balance: fake and real pixels weigh the same whatever the mask covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from editloop.models.reward import CoherenceReward
from trainers.distributed import average_gradients, mean_over_ranks, rank_mean


@dataclass(frozen=True)
class AdversarialConfig:
    weight: float = 1.0  # of the generator's coherence term
    warmup_steps: int = 10
    d_every: int = 1
    d_lr: float = 1e-4
    d_clip: float = 1.0
    real_label: float = 0.9

    def __post_init__(self) -> None:
        if self.d_every < 1:
            raise ValueError(f"`d_every` must be >= 1, got {self.d_every}")
        if not 0.5 < self.real_label <= 1.0:
            raise ValueError(f"`real_label` must be in (0.5, 1], got {self.real_label}")
        if self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {self.warmup_steps}")

    def generator_active(self, step: int) -> bool:
        """Does generator step `step` (0-based) include the adversarial term?"""
        return step >= self.warmup_steps

    def discriminator_due(self, step: int) -> bool:
        return step % self.d_every == 0


def generator_loss(disc: CoherenceReward, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean -log sigmoid(logit) over the regenerated pixels: the generator wants them judged real."""
    logits = disc(images.float())
    return ((-F.logsigmoid(logits)) * mask).sum() / rank_mean(mask.sum()).clamp(min=1)


def composite(generated: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return generated * mask + source * (1 - mask)


def discriminator_loss(disc: CoherenceReward, generated: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                       real_label: float = 0.9) -> torch.Tensor:
    """Class-balanced per-pixel BCE: pasted generated pixels fake, everything else real (smoothed)."""
    images = torch.cat([composite(generated.detach(), source, mask), source]).float()
    fake = torch.cat([mask, torch.zeros_like(mask)])
    logits = disc(images)
    target = (1 - fake) * real_label
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    fake_term = (bce * fake).sum() / rank_mean(fake.sum()).clamp(min=1)  # pixel counts of the global batch
    real_term = (bce * (1 - fake)).sum() / rank_mean((1 - fake).sum()).clamp(min=1)
    return 0.5 * (fake_term + real_term)


def discriminator_step(disc: CoherenceReward, opt: torch.optim.Optimizer, generated: torch.Tensor,
                       source: torch.Tensor, mask: torch.Tensor, cfg: AdversarialConfig) -> dict[str, float]:
    disc.train()
    disc.requires_grad_(True)
    loss = discriminator_loss(disc, generated, source, mask, cfg.real_label)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(disc.parameters())  # a data-parallel job: the global batch's gradient on every rank
    norm = torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.d_clip)
    opt.step()
    disc.requires_grad_(False)
    return {"d_loss": mean_over_ranks(float(loss.detach())), "d_grad_norm": float(norm)}
