"""Stages 2 and 3: latent diffusion (epsilon prediction, Min-SNR weighting, EMA) for the
text-to-image UNet + text encoder, then the 9-channel inpainting UNet initialised from it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from editloop.checkpoint import load_checkpoint, save_checkpoint
from editloop.models.configs import SCHEDULES, TINY_TEXT, tiny_unet
from editloop.models.coord_unet import clone_unet, load_unet, new_unet
from editloop.models.data import Batch, inpaint_batch, quality_mix_batch, step_rng
from editloop.models.pipeline_io import token_ids
from editloop.models.tokenizer import build_tokenizer
from editloop.models.zoo import save_pipeline, training_scheduler
from trainers.pretrain.common import EMA, autocast, guarded_step, set_lr, setup_device, should_checkpoint
from trainers.pretrain.config import PretrainConfig


def inflate_conv_in(unet: UNet2DConditionModel, in_channels: int = 9) -> UNet2DConditionModel:
    """A copy of `unet` taking `in_channels` inputs; the new channels' weights start at zero. A
    CoordUNet's coordinate channels stay the last inputs of conv_in and keep their weights."""
    inflated = clone_unet(unet, in_channels=in_channels)
    state = unet.state_dict()
    old = state["conv_in.weight"]
    before = unet.config.in_channels
    coords = old.shape[1] - before
    new = torch.zeros(old.shape[0], in_channels + coords, *old.shape[2:], dtype=old.dtype)
    new[:, :before] = old[:, :before]
    new[:, in_channels:] = old[:, before:]
    state["conv_in.weight"] = new
    inflated.load_state_dict(state)
    return inflated


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al., 2023): low-noise steps down-weighted to SNR gamma. For epsilon the
    weight is min(snr, gamma) / snr; for v-prediction min(1, gamma / snr), so the pure-noise steps a
    zero-terminal-SNR schedule adds keep weight 1 (the v loss is x0's weighted by snr + 1)."""
    if gamma <= 0:
        return torch.ones_like(timesteps, dtype=torch.float32)
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(gamma / snr.clamp(min=1e-8), max=1.0)
    return torch.clamp(snr, max=gamma) / snr


def prediction_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"`prediction_type` must be 'epsilon' or 'v_prediction', got {kind!r}")


def diffusion_loss(
    unet: UNet2DConditionModel, text_encoder: CLIPTextModel, vae: AutoencoderKL, scheduler,
    input_ids: torch.Tensor, batch: Batch, gamma: float,
) -> torch.Tensor:
    device = input_ids.device
    x = batch.images.to(device)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.sample() * sf
        extra = []
        if batch.masks is not None:  # SD inpainting input: [noisy, mask, masked-image latents]
            mask = batch.masks.to(device)
            masked = vae.encode(x * (mask < 0.5)).latent_dist.sample() * sf
            extra = [F.interpolate(mask, size=latents.shape[-2:]), masked]
    noise = torch.randn_like(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=device)
    noisy = scheduler.add_noise(latents, noise, t)
    cond = text_encoder(input_ids)[0]
    pred = unet(torch.cat([noisy, *extra], dim=1), t, cond).sample
    target = prediction_target(scheduler, latents, noise, t)
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(scheduler, t, gamma)).mean()


def stage_text_encoder(cfg: PretrainConfig, stage: str, init_dir: Path | None) -> tuple[CLIPTextModel, bool]:
    """The text encoder a diffusion stage starts from, and whether it trains: the inpainting stage inherits the
    text-to-image model's; the text-to-image stage starts from stage "text"'s contrastive encoder when OUT/text
    holds one, else from scratch. A contrastive encoder stays frozen in both stages with `text_freeze`."""
    pretrained = cfg.out / "text" / "text_encoder"
    frozen = cfg.text_freeze and pretrained.is_dir()
    if stage != "t2i":
        return CLIPTextModel.from_pretrained(init_dir / "text_encoder", local_files_only=True), not frozen
    if pretrained.is_dir():
        print(f"t2i: text encoder from {pretrained} ({'frozen' if frozen else 'fine-tuned'})")
        return CLIPTextModel.from_pretrained(pretrained, local_files_only=True), not frozen
    return CLIPTextModel(CLIPTextConfig(**TINY_TEXT)), True


def train_diffusion(cfg: PretrainConfig, stage: str, vae_dir: Path, init_dir: Path | None,
                    out_dir: Path, ckpt_path: Path) -> dict[str, float]:
    """Train `stage` ("t2i" or "inpaint") and save a full diffusers pipeline to `out_dir`."""
    steps, batch_size, lr = {
        "t2i": (cfg.t2i_steps, cfg.t2i_batch, cfg.t2i_lr),
        "inpaint": (cfg.inpaint_steps, cfg.inpaint_batch, cfg.inpaint_lr),
    }[stage]
    # 1. components: frozen VAE; fresh (t2i) or inherited (inpaint) UNet and text encoder
    device, dtype = setup_device(cfg)
    torch.manual_seed(cfg.seed + 1)
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).to(device).eval().requires_grad_(False)
    tokenizer = build_tokenizer()
    if stage == "t2i":
        unet = new_unet(tiny_unet(4), cfg.coord_channels)
    else:
        if init_dir is None or not (init_dir / "unet").is_dir():
            raise ValueError(f"inpainting starts from the text-to-image model; none at {init_dir}")
        unet = inflate_conv_in(load_unet(init_dir / "unet"))
    text_encoder, train_text = stage_text_encoder(cfg, stage, init_dir)
    text_encoder.to(device).train(train_text).requires_grad_(train_text)
    unet.to(device).train()
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema = EMA(params, cfg.ema)
    # the inpainting model keeps the schedule its text-to-image initialisation was trained on
    init_schedule = DDIMScheduler.from_pretrained(init_dir / "scheduler") if stage == "inpaint" else None
    schedule = init_schedule or DDIMScheduler(**SCHEDULES[cfg.schedule])
    scheduler = training_scheduler(schedule.config)

    # 2. resume
    step = 0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step = state["step"]

    # 3. the loop
    bar = tqdm(total=steps, initial=step, desc=stage, unit="step", disable=None)
    loss_ema = None
    while step < steps:
        rng = step_rng(cfg.seed, stage, step)
        batch = inpaint_batch(rng, batch_size) if stage == "inpaint" else quality_mix_batch(rng, batch_size)
        captions = ["" if rng.random() < cfg.caption_dropout else c for c in batch.captions]
        ids = token_ids(tokenizer, captions, device)
        set_lr(opt, lr, step, steps, cfg.warmup)
        with autocast(device, dtype):
            loss = diffusion_loss(unet, text_encoder, vae, scheduler, ids, batch, cfg.min_snr_gamma)
        guarded_step(opt, loss, params, ema, step, stage)
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}")
        if should_checkpoint(step, steps, cfg.checkpoint_every):
            save_checkpoint(ckpt_path, {
                "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                "optimizer": opt.state_dict(), "ema": ema.state_dict(), "step": step,
                "config": cfg.to_dict(), "stage": stage,
            })
    bar.close()

    # 4. save the EMA weights as a diffusers pipeline
    ema.copy_to(params)
    components = {
        "vae": vae.to("cpu"), "text_encoder": text_encoder.to("cpu").eval(), "tokenizer": tokenizer,
        "unet": unet.to("cpu").eval(), "scheduler": schedule,
    }
    save_pipeline(components, out_dir)
    return {f"{stage}_steps": step, f"{stage}_final_loss": float(loss_ema or 0.0)}
