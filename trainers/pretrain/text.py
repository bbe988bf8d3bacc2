"""Stage "text": a text encoder pretrained contrastively against the world's images (CLIP, Radford et al.,
2021), for the text-to-image model to start from, as Stable Diffusion starts from CLIP.

Trained jointly with the UNet from scratch, the text encoder never learns the position (BENCHMARKS.md, "The
text encoder does not encode the position"): the UNet reads the layout from the noise and never asks the text
for it. Here the encoder must tell images apart by their captions: a symmetric InfoNCE loss over the batch, and
for each image two hard negative captions, the same scene with one object moved to a free cell, and with one
attribute changed (two objects' colours swapped, or one recoloured), so the position and the binding of
attributes to objects are what separates a caption from its negatives. The text side is the pooled CLIP output
and the mean over the whole padded state sequence (what the UNet's cross-attention reads); the image side a
small CNN that keeps the layout (flattened, no global pooling). Only the text encoder is saved.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from editloop.checkpoint import load_checkpoint, save_checkpoint
from editloop.models.configs import TINY_TEXT
from editloop.models.data import quality_mix_batch, step_rng
from editloop.models.pipeline_io import token_ids
from editloop.models.tokenizer import build_tokenizer
from editloop.world.palette import COLORS, POSITIONS
from editloop.world.scene import Scene
from trainers.pretrain.common import EMA, autocast, guarded_step, set_lr, setup_device, should_checkpoint
from trainers.pretrain.config import PretrainConfig

EMBED = 128


class ImageTower(nn.Module):
    """64x64 RGB -> an embedding that keeps where things are: strided convolutions to 8x8, then a linear
    layer over the flattened map (a global pool would throw the layout away)."""

    def __init__(self, dim: int = EMBED) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 32, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.head = nn.Linear(32 * 8 * 8, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(images).flatten(1))


class TextTower(nn.Module):
    """The CLIPTextModel the diffusion model will read, with a projection of its pooled output and of the mean
    of its whole padded state sequence."""

    def __init__(self, text_encoder: CLIPTextModel, dim: int = EMBED) -> None:
        super().__init__()
        self.encoder = text_encoder
        width = text_encoder.config.hidden_size
        self.head = nn.Linear(2 * width, dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids)
        return self.head(torch.cat([out.pooler_output, out.last_hidden_state.mean(dim=1)], dim=1))


def moved(rng: np.random.Generator, scene: Scene) -> Scene:
    """The scene with one object moved to a free cell: its caption differs in the position alone."""
    i = int(rng.integers(len(scene.objects)))
    taken = {o.position for o in scene.objects}
    free = [p for p in POSITIONS if p not in taken]
    objects = list(scene.objects)
    objects[i] = replace(objects[i], position=free[int(rng.integers(len(free)))])
    return Scene(scene.background, tuple(objects))


def rebound(rng: np.random.Generator, scene: Scene) -> Scene:
    """The scene with an attribute bound to another object: two objects' colours swapped (several objects), or
    one object recoloured (a single object, or a swap that would repeat a (colour, shape))."""
    objects = list(scene.objects)
    used = {(o.color, o.shape) for o in objects}
    if len(objects) > 1:
        i, j = rng.choice(len(objects), size=2, replace=False)
        a, b = objects[i], objects[j]
        if a.color != b.color and (b.color, a.shape) not in used and (a.color, b.shape) not in used:
            objects[i], objects[j] = replace(a, color=b.color), replace(b, color=a.color)
            return Scene(scene.background, tuple(objects))
    i = int(rng.integers(len(objects)))
    colors = [c for c in COLORS if (c, objects[i].shape) not in used]
    objects[i] = replace(objects[i], color=colors[int(rng.integers(len(colors)))])
    return Scene(scene.background, tuple(objects))


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, negative_emb: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; images also choose against the hard negative captions (N*k of them, after the N)."""
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(torch.cat([text_emb, negative_emb]).float(), dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T  # N x N(1+k)
    target = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(img)].T, target)) / 2


def retrieval_accuracy(images: nn.Module, texts: nn.Module, tokenizer, seed: int, n: int,
                       device: torch.device) -> dict[str, float]:
    """On held-out scenes: how often an image's embedding is closer to its caption than to the same caption
    with one object moved (position) or an attribute re-bound (binding); chance is 0.5 for each."""
    rng = np.random.default_rng([seed, 7919])
    batch = quality_mix_batch(rng, n)
    caps = {"true": batch.captions, "position": [moved(rng, s).caption for s in batch.scenes],
            "binding": [rebound(rng, s).caption for s in batch.scenes]}
    with torch.no_grad():
        img = F.normalize(images(batch.images.to(device)).float(), dim=-1)
        emb = {k: F.normalize(texts(token_ids(tokenizer, v, device)).float(), dim=-1) for k, v in caps.items()}
    true = (img * emb["true"]).sum(-1)
    return {k: float((true > (img * emb[k]).sum(-1)).float().mean()) for k in ("position", "binding")}


def train_text(cfg: PretrainConfig, out_dir: Path, ckpt_path: Path) -> dict[str, float]:
    """Train the text encoder contrastively for cfg.text_steps and save it (EMA weights) to out_dir."""
    device, dtype = setup_device(cfg)
    torch.manual_seed(cfg.seed + 2)
    tokenizer = build_tokenizer()
    texts = TextTower(CLIPTextModel(CLIPTextConfig(**TINY_TEXT))).to(device).train()
    images = ImageTower().to(device).train()
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    params = [*texts.parameters(), *images.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=1e-2)
    ema = EMA(params, cfg.ema)
    step = 0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        texts.load_state_dict(state["texts"])
        images.load_state_dict(state["images"])
        with torch.no_grad():
            logit_scale.copy_(state["logit_scale"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step = state["step"]
    bar = tqdm(total=cfg.text_steps, initial=step, desc="text", unit="step", disable=None)
    loss_ema = None
    while step < cfg.text_steps:
        rng = step_rng(cfg.seed, "text", step)
        batch = quality_mix_batch(rng, cfg.text_batch)
        negatives = [moved(rng, s).caption for s in batch.scenes] + [rebound(rng, s).caption for s in batch.scenes]
        set_lr(opt, cfg.text_lr, step, cfg.text_steps, cfg.warmup)
        with autocast(device, dtype):
            captions, negative = (texts(token_ids(tokenizer, c, device)) for c in (batch.captions, negatives))
            loss = contrastive_loss(images(batch.images.to(device)), captions, negative, logit_scale)
        guarded_step(opt, loss, params, ema, step, "text")
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}")
        if should_checkpoint(step, cfg.text_steps, cfg.checkpoint_every):
            save_checkpoint(ckpt_path, {"texts": texts.state_dict(), "images": images.state_dict(),
                                        "logit_scale": logit_scale.detach(), "optimizer": opt.state_dict(),
                                        "ema": ema.state_dict(), "step": step, "config": cfg.to_dict()})
    bar.close()
    ema.copy_to(params)
    texts.eval()
    images.eval()
    accuracy = retrieval_accuracy(images, texts, tokenizer, cfg.seed, cfg.eval_n, device)
    print(f"text: held-out retrieval against a moved object {accuracy['position']:.3f}, "
          f"against a re-bound attribute {accuracy['binding']:.3f} (chance 0.5)")
    out_dir.mkdir(parents=True, exist_ok=True)
    texts.encoder.to("cpu").save_pretrained(out_dir / "text_encoder")
    return {"text_steps": step, "text_final_loss": float(loss_ema or 0.0),
            "text_position_accuracy": accuracy["position"], "text_binding_accuracy": accuracy["binding"]}
