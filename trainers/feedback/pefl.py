"""PeFL (ByteEdit's perceptual feedback learning) for an inpainting latent diffusion model.

One step, as ../shared/DESIGN.md gives it: with a T-step DDIM schedule, the source latent is noised
straight to step T1, sampled without gradients down to t' ~ U[1, T2] (steps left), and x0 is predicted
in one step with gradients through the UNet; the VAE decoder turns x0 into pixels and each reward
model scores them: L_reward = sum_k w_k * -log sigmoid(R_k(c, x0)). A reference regulariser
eta * (L1 + perceptual) keeps x0 near the source where the source is the ground truth.

Optionally (`anchor`, a frozen copy of the start UNet) the forward also returns the drift: the squared
difference between the trained and the start model's noise predictions at the same noisy latent. For
Gaussian reverse steps the KL divergence between the two models' steps is proportional to it, which is
DPOK's KL regulariser (Fan et al., 2023, "DPOK: Reinforcement learning for fine-tuning text-to-image
diffusion models", section 4.2): a trust region that keeps the model where its reward's labels were
collected. Not in ByteEdit; off unless `kl_weight` > 0 (BENCHMARKS.md says why it was tried).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from editloop.models.data import to_tensor
from editloop.models.pipeline_io import encode_texts
from editloop.models.zoo import predicted_x0
from trainers.feedback.examples import FeedbackExample


def autocast(device: torch.device):
    """bf16 autocast on CUDA (every feedback method's UNet passes: PeFL, DPO, GRPO); a no-op context on CPU (fp32).
    Losses and log-likelihoods are computed from the outputs cast back to fp32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@dataclass(frozen=True)
class PeflSchedule:
    steps: int = 20  # T: the sampling steps the model is trained for
    start: int = 15  # T1: the source latent is noised to the step with this many steps left
    stop: int = 10  # T2: x0 is predicted with gradients from t' ~ U[1, T2] steps left

    def __post_init__(self) -> None:
        if not 1 <= self.stop < self.start <= self.steps:
            raise ValueError(f"PeFL schedule needs 1 <= T2 < T1 <= T, got (T, T1, T2) = "
                             f"({self.steps}, {self.start}, {self.stop})")


@dataclass
class EditBatch:
    """Model inputs for a batch of examples (pixels in [-1, 1]; latents scaled by the VAE factor)."""

    source: torch.Tensor  # N,3,H,W
    mask: torch.Tensor  # N,1,H,W, 1 = regenerate
    reference: torch.Tensor  # N,1,H,W, 1 = pixels compared with the source
    source_latents: torch.Tensor  # N,4,h,w
    masked_latents: torch.Tensor  # N,4,h,w (the source with the masked pixels zeroed, as diffusers does)
    mask_latents: torch.Tensor  # N,1,h,w
    prompts: list[str]
    embeddings: torch.Tensor  # 2N,L,D: unconditional then conditional


def check_masks(masks: np.ndarray) -> None:
    """A mask that covers nothing or everything gives the model nothing to learn from."""
    covered = masks.reshape(len(masks), -1).mean(axis=1)
    for i, c in enumerate(covered):
        if c == 0:
            raise ValueError(f"`mask` of example {i} covers nothing; set the pixels to regenerate to 1")
        if c == 1:
            raise ValueError(f"`mask` of example {i} covers the whole image; that is text-to-image, not editing")


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """(2N, L, D) text states: the empty prompt (classifier-free guidance) then the prompts, read as the
    pipelines and pretraining read them (padded, no attention mask), so PeFL trains the UNet on the states it
    is sampled with."""
    return encode_texts(pipe.tokenizer, pipe.text_encoder, [""] * len(prompts) + list(prompts)).to(pipe.unet.device)


@torch.no_grad()
def inpaint_conditioning(pipe, source: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The inpainting UNet's extra inputs: (masked-source latents, the mask at latent size `size`), the source's
    masked pixels zeroed as diffusers does."""
    masked = pipe.vae.encode(source * (mask < 0.5)).latent_dist.mode() * pipe.vae.config.scaling_factor
    return masked, F.interpolate(mask, size=size)


@torch.no_grad()
def prepare(pipe, examples: list[FeedbackExample]) -> EditBatch:
    masks = np.stack([e.mask for e in examples])
    check_masks(masks)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    source = to_tensor([e.source for e in examples]).to(device, dtype)
    mask = torch.from_numpy(masks.astype(np.float32))[:, None].to(device, dtype)
    reference = torch.from_numpy(np.stack([e.reference for e in examples]).astype(np.float32))[:, None]
    scale = pipe.vae.config.scaling_factor
    source_latents = pipe.vae.encode(source).latent_dist.mode() * scale
    masked_latents, mask_latents = inpaint_conditioning(pipe, source, mask, source_latents.shape[-2:])
    return EditBatch(source, mask, reference.to(device, dtype), source_latents, masked_latents, mask_latents,
                     [e.prompt for e in examples], encode_prompts(pipe, [e.prompt for e in examples]))


def guided_prediction(unet, latents: torch.Tensor, t: torch.Tensor, batch: EditBatch, guidance: float) -> torch.Tensor:
    """Classifier-free guided output (epsilon or v) of the 9-channel inpainting UNet, one forward for both halves."""
    x = torch.cat([latents] * 2)
    inputs = torch.cat([x, torch.cat([batch.mask_latents] * 2), torch.cat([batch.masked_latents] * 2)], dim=1)
    eps = unet(inputs, t, encoder_hidden_states=batch.embeddings).sample
    uncond, cond = eps.chunk(2)
    return uncond + guidance * (cond - uncond)


def ddim(pipe, steps: int) -> DDIMScheduler:
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device=pipe.unet.device)
    return sched


class PeflForward(NamedTuple):
    x0: torch.Tensor  # predicted x0 latents, with gradients through the last UNet call
    steps_left: int  # t'
    drift: torch.Tensor | None  # per example: mean squared (prediction - the anchor's); None without an anchor


def predict_x0(pipe, batch: EditBatch, schedule: PeflSchedule, generator: torch.Generator,
               guidance: float = 4.0, steps_left: int | None = None, anchor=None,
               rows: tuple[int, slice] | None = None) -> PeflForward:
    """The PeFL forward: x0 latents with gradients through the last UNet call, t' (steps left), and with an
    `anchor` UNet (the frozen start model) the drift of the last prediction from the anchor's. `rows` (global
    batch size, this rank's slice) in a data-parallel job: the noise is drawn for the global batch and this rank
    keeps its rows, so the job draws exactly what one process would."""
    sched = ddim(pipe, schedule.steps)
    ts = sched.timesteps
    first = schedule.steps - schedule.start
    if steps_left is None:
        steps_left = int(torch.randint(1, schedule.stop + 1, (1,), generator=generator))
    last = schedule.steps - steps_left
    shape = batch.source_latents.shape
    if rows is None:
        noise = torch.randn(shape, generator=generator)
    else:
        noise = torch.randn((rows[0], *shape[1:]), generator=generator)[rows[1]]
    noise = noise.to(batch.source_latents)
    z = sched.add_noise(batch.source_latents, noise, ts[first : first + 1])
    with torch.no_grad():
        for i in range(first, last):
            z = sched.step(guided_prediction(pipe.unet, z, ts[i], batch, guidance), ts[i], z).prev_sample
    t = ts[last]
    out = guided_prediction(pipe.unet, z, t, batch, guidance)
    drift = None
    if anchor is not None:
        with torch.no_grad():
            reference = guided_prediction(anchor, z, t, batch, guidance)
        drift = ((out.float() - reference.float()) ** 2).mean(dim=(1, 2, 3))
    return PeflForward(predicted_x0(sched, z, t, out), steps_left, drift)


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [-1, 1], differentiable (the VAE's weights stay frozen)."""
    return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)


def vae_features(vae, images: torch.Tensor) -> list[torch.Tensor]:
    """Activations of the frozen VAE encoder's down blocks: the perceptual space of the regulariser
    (LPIPS needs downloaded weights; this encoder was trained here on the same world)."""
    h = vae.encoder.conv_in(images)
    feats = []
    for block in vae.encoder.down_blocks:
        h = block(h)
        feats.append(h)
    return feats


def reference_loss(vae, x0: torch.Tensor, batch: EditBatch, perceptual_weight: float = 1.0) -> torch.Tensor:
    """Per-example L1 + perceptual distance to the source over the reference region."""
    region = batch.reference
    l1 = ((x0 - batch.source).abs() * region).sum(dim=(1, 2, 3)) / (3 * region.sum(dim=(1, 2, 3)).clamp(min=1))
    perceptual = torch.zeros_like(l1)
    for fa, fb in zip(vae_features(vae, x0), vae_features(vae, batch.source)):
        fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-6)
        fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-6)
        r = F.interpolate(region, size=fa.shape[-2:], mode="area")
        perceptual = perceptual + ((fa - fb) ** 2).sum(dim=1, keepdim=True).mul(r).sum(dim=(1, 2, 3)) / (
            r.sum(dim=(1, 2, 3)).clamp(min=1e-6))
    return l1 + perceptual_weight * perceptual
