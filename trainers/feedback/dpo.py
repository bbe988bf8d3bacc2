"""Diffusion-DPO (Wallace et al., 2023, "Diffusion Model Alignment Using Direct Preference Optimization") for the
inpainting editor, straight from the best/worst labels: no reward model in the loss.

Pairs: every (best, other) and (other, worst) of each labelled edit set (its source and mask), as the aesthetic
reward reads them (trainers/reward/data.py). One step: a batch of pairs drawn from (seed, "dpo", step) alone (a
resumed run replays nothing); both images VAE-encoded, noised with the same noise at the same timestep; the
9-channel UNet (noisy latent, mask, masked source) predicts the noise (or v) for both, and so does the frozen
reference (the start UNet). With the per-example errors e = ||target - prediction||^2 (mean over latent elements):

    loss = -log sigmoid(-beta / 2 * ((e_w - e_l) - (e_w_ref - e_l_ref)))

the paper's objective in the form of its reference training script (beta_dpo = 5000 for Stable Diffusion 1.5, the
default here). The stage runs in the feedback lifecycle (run.py): same start model, checkpoints, EMA, gate and
promotion; the rewards appear only at the gate, never in the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import CandidateSet, Preference, TrainingRun
from editloop.models.data import step_rng, to_tensor
from editloop.store.base import BlobStore
from trainers.feedback.loop import Diverged
from trainers.feedback.pefl import autocast, encode_prompts, inpaint_conditioning
from trainers.reward.data import ImageCache, NotEnoughLabels, Pair, pairs_by_label

MIN_LABELS = 20  # best/worst answers on edit sets a DPO run needs


@dataclass(frozen=True)
class DpoData:
    pairs: list[Pair]
    label_ids: list[int]  # the labels the pairs came from (lineage; fixed for the run, resumes included)


def edit_labels(session: Session) -> list[Preference]:
    """Valid best/worst answers on edit candidate sets (those with a source and a mask), oldest first."""
    return list(session.scalars(
        select(Preference).join(CandidateSet, CandidateSet.id == Preference.candidate_set_id)
        .where(Preference.status == "valid", CandidateSet.source_image_id.is_not(None),
               CandidateSet.mask_key.is_not(None)).order_by(Preference.id)))


def dpo_data(sessions: sessionmaker[Session], store: BlobStore, run_id: str, min_labels: int = MIN_LABELS,
             labels_of: Callable[[Session], list[Preference]] = edit_labels,
             sets: str = "edit sets (with a source and a mask)") -> DpoData:
    """The run's preference pairs. Its first start takes every valid label `labels_of` gives (on edit sets by
    default) and writes their ids on the run's row; a resumed run reads the same labels again, so labels that
    arrive meanwhile do not change it. NotEnoughLabels (with the count and the minimum) when too few are usable."""
    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        pinned = (run.inputs or {}).get("labels") if run is not None else None
        labels = labels_of(s)
        if pinned is not None:
            wanted = set(pinned)
            labels = [p for p in labels if p.id in wanted]
        pairs, used, missing = [], [], 0
        for label, got in pairs_by_label(s, store, labels):
            if got is None:
                missing += 1
                continue
            pairs.extend(got)
            used.append(label.id)
        if len(used) < min_labels:
            raise NotEnoughLabels(f"DPO needs at least {min_labels} valid best/worst labels on {sets}; "
                                  f"{len(used)} usable ({missing} skipped: an image is gone from the store)")
        if run is not None and pinned is None:
            run.inputs = {**(run.inputs or {}), "labels": used}
    return DpoData(pairs, used)


@dataclass
class PairLatents:
    win: torch.Tensor  # N,4,h,w
    lose: torch.Tensor
    mask_latents: torch.Tensor  # N,1,h,w
    masked_latents: torch.Tensor  # N,4,h,w
    embeddings: torch.Tensor  # N,L,D (the prompts; no unconditional half)


@torch.no_grad()
def encode_pairs(pipe, pairs: list[Pair], cache: ImageCache) -> PairLatents:
    device, dtype = pipe.unet.device, pipe.unet.dtype
    scale = pipe.vae.config.scaling_factor

    def latents(images: list[np.ndarray]) -> torch.Tensor:
        return pipe.vae.encode(to_tensor(images).to(device, dtype)).latent_dist.mode() * scale

    win = latents([cache.image(p.win) for p in pairs])
    lose = latents([cache.image(p.lose) for p in pairs])
    masks = torch.from_numpy(np.stack([cache.mask(p.mask) for p in pairs]).astype(np.float32))[:, None]
    masks = masks.to(device, dtype)
    sources = to_tensor([cache.image(p.source) for p in pairs]).to(device, dtype)
    masked, mask_latents = inpaint_conditioning(pipe, sources, masks, win.shape[-2:])
    embeddings = encode_prompts(pipe, [p.prompt for p in pairs])[len(pairs):]
    return PairLatents(win, lose, mask_latents, masked, embeddings)


def denoising_errors(unet, sched: DDPMScheduler, batch: PairLatents, t: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """Per-example squared error of `unet`'s prediction on the win images then the lose images (2N,), both noised
    with `noise` at `t`."""
    x0 = torch.cat([batch.win, batch.lose])
    eps, ts = torch.cat([noise, noise]), torch.cat([t, t])
    noisy = sched.add_noise(x0, eps, ts)
    target = eps if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, eps, ts)
    inputs = torch.cat([noisy, torch.cat([batch.mask_latents] * 2), torch.cat([batch.masked_latents] * 2)], dim=1)
    with autocast(inputs.device):
        pred = unet(inputs, ts, encoder_hidden_states=torch.cat([batch.embeddings] * 2)).sample
    return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))


def dpo_loss(errors: torch.Tensor, reference_errors: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """The Diffusion-DPO loss from the model's and the reference's errors (win half, then lose half)."""
    n = len(errors) // 2
    model_diff = errors[:n] - errors[n:]
    reference_diff = reference_errors[:n] - reference_errors[n:]
    inside = -0.5 * beta * (model_diff - reference_diff)
    loss = -F.logsigmoid(inside).mean()
    seen = inside.detach()
    return loss, {"implicit_accuracy": float((seen > 0).float().mean()),
                  "model_diff": float(model_diff.detach().mean()), "reference_diff": float(reference_diff.mean())}


def dpo_step(data: DpoData, cache: ImageCache) -> Callable[..., dict[str, float]]:
    """A training step for trainers.feedback.loop.train_feedback: (pipe, cfg, step, params, opt, anchor) -> record,
    `anchor` being the frozen reference UNet."""
    made: list[DDPMScheduler] = []  # the training noise schedule, built once from the pipeline's

    def step_fn(pipe, cfg, step: int, params, opt, anchor) -> dict[str, Any]:
        if not made:
            made.append(DDPMScheduler.from_config(pipe.scheduler.config))
        sched = made[0]
        chosen, generator = draw_pairs(data, cfg, step, "dpo")
        batch = encode_pairs(pipe, chosen, cache)
        t, noise = draw_noise(sched, batch.win, generator)
        pipe.unet.train()
        errors = denoising_errors(pipe.unet, sched, batch, t, noise)
        with torch.no_grad():
            reference = denoising_errors(anchor, sched, batch, t, noise)
        return dpo_update(errors, reference, cfg, step, params, opt)

    return step_fn


def draw_pairs(data: DpoData, cfg, step: int, stream: str) -> tuple[list[Pair], torch.Generator]:
    """Step `step`'s batch of pairs and the generator of its timesteps and noise: from (seed, stream, step) alone,
    so a resumed run draws what it would have drawn."""
    rng = step_rng(cfg.seed, stream, step)
    chosen = [data.pairs[int(i)] for i in rng.integers(len(data.pairs), size=cfg.batch_size)]
    return chosen, torch.Generator("cpu").manual_seed(int(rng.integers(2**62)))


def draw_noise(scheduler, latents: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, noise) for a batch shaped like `latents`, shared by its win and lose halves."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    return t.to(latents.device), noise


def dpo_update(errors: torch.Tensor, reference_errors: torch.Tensor, cfg, step: int, params, opt) -> dict[str, Any]:
    """The DPO loss of the model's and the reference's errors, one clipped optimiser step; the step's record.
    Diverged on a non-finite loss (nothing is stepped)."""
    loss, record = dpo_loss(errors, reference_errors, cfg.dpo_beta)
    if not torch.isfinite(loss):
        raise Diverged(f"dpo loss is {float(loss)} at step {step + 1}; the last good checkpoint is kept")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    return {**record, "loss": float(loss.detach()), "grad_norm": float(grad_norm)}
