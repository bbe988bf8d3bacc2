"""Stage 1: the AutoencoderKL, gated by the judge on clean reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from tqdm import tqdm

from editloop.checkpoint import load_checkpoint, save_checkpoint
from editloop.models.configs import TINY_VAE
from editloop.models.data import quality_mix_batch, step_rng
from editloop.models.evaluate import vae_gate_accuracy
from trainers.pretrain.common import autocast, set_lr, setup_device, should_checkpoint
from trainers.pretrain.config import PretrainConfig


class GateFailed(RuntimeError):
    """The judge did not accept the stage's output."""


def edge_weights(x: torch.Tensor, boost: float = 20.0, tip_boost: float = 200.0,
                 threshold: float = 0.3) -> torch.Tensor:
    """Per-pixel loss weights: 1, plus `boost` beside a colour change (a jump of more than
    `threshold` in any channel), plus `tip_boost` on one-pixel tips (at most one 4-neighbour of
    the same colour).

    The judge reads shapes from single pixels: a radius-5 circle's four one-pixel tips make it
    11 px wide, and without them it is a 9x9 blob judged a square. So edges and tips must be exact.
    """
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    neighbours = [pad[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    differs = torch.stack([(n - x).abs().amax(dim=1) > threshold for n in neighbours], dim=1)  # N,4,H,W
    edge = differs.any(dim=1, keepdim=True)
    tip = (4 - differs.sum(dim=1, keepdim=True)) <= 1
    return 1.0 + boost * edge.float() + tip_boost * tip.float()


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float, edge_boost: float = 20.0) -> torch.Tensor:
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    w = edge_weights(x, edge_boost)
    err = recon - x
    # L1 keeps flat colours exact; the squared term punishes the rare large error; edges weigh more
    rec = ((err.abs() + err**2) * w).mean() / w.mean()
    return rec + kl_weight * posterior.kl().mean() / x[0].numel()


def train_vae(cfg: PretrainConfig, out_dir: Path, ckpt_path: Path) -> dict[str, float]:
    """Train until the gate passes (checked at each checkpoint) or `vae_steps` is reached."""
    # 1. model, optimizer, resume
    device, dtype = setup_device(cfg)
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**TINY_VAE).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    step, gate = 0, 0.0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, gate = state["step"], state.get("gate", 0.0)

    # 2. the loop
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae", unit="step", disable=None)
    while step < cfg.vae_steps and not (cfg.vae_gate > 0 and gate >= cfg.vae_gate):
        batch = quality_mix_batch(step_rng(cfg.seed, "vae", step), cfg.vae_batch, clean_fraction=0.25)
        set_lr(opt, cfg.vae_lr, step, cfg.vae_steps, cfg.warmup)
        with autocast(device, dtype):
            loss = vae_loss(vae, batch.images.to(device), cfg.vae_kl, cfg.vae_edge_boost)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"vae loss is {loss.item()} at step {step}; last good checkpoint kept")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", gate=f"{gate:.3f}")
        # 3. checkpoint and judge
        if should_checkpoint(step, cfg.vae_steps, cfg.checkpoint_every):
            vae.eval()
            gate = vae_gate_accuracy(vae, n=cfg.eval_n) if cfg.vae_gate > 0 else 0.0
            vae.train()
            save_checkpoint(ckpt_path, {"model": vae.state_dict(), "optimizer": opt.state_dict(),
                                        "step": step, "gate": gate, "config": cfg.to_dict()})
            bar.set_postfix(loss=f"{loss.item():.4f}", gate=f"{gate:.3f}")
    bar.close()

    # 4. gate, latent scale, save
    vae.eval()
    gate = vae_gate_accuracy(vae, n=cfg.eval_n)
    if cfg.vae_gate > 0 and gate < cfg.vae_gate:
        raise GateFailed(
            f"VAE reconstructions of clean renders judged correct {gate:.3f} < gate {cfg.vae_gate}; "
            f"raise --vae-steps and run again (training resumes from step {step})"
        )
    vae.register_to_config(scaling_factor=latent_scale(vae, cfg.seed))
    vae.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    return {"vae_steps": step, "vae_clean_recon_caption_accuracy": gate,
            "vae_scaling_factor": vae.config.scaling_factor}


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, seed: int, n: int = 256) -> float:
    """1 / std of the latents, so the diffusion model sees unit-variance inputs (SD's 0.18215)."""
    device = next(vae.parameters()).device
    batch = quality_mix_batch(step_rng(seed, "latent-scale", 0), n)
    z = vae.encode(batch.images.to(device)).latent_dist.mode()
    return float(1.0 / z.float().std().clamp_min(1e-6))
