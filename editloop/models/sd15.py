"""Stable Diffusion 1.5's architecture, built from its configuration with random weights (no download).

The UNet (blocks 320/640/1280/1280, cross-attention 768, 860M parameters; 9 input channels for inpainting), the
VAE (128/256/512/512, 8x downsampling) and a 12-layer, 768-wide CLIP text encoder, with this project's world
tokenizer (the vocabulary is the only difference from SD 1.5's text encoder). `editloop models init-sd15 --out DIR`
writes them in diffusers format; every trainer and service takes such a directory by path (EDITLOOP_EDITOR_MODEL,
--model), so the full-size code paths (bf16 autocast, gradient checkpointing, LoRA, SDPA attention) are the ones
the tiny models run. Real SD 1.5 weights load the same way where they can be had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from editloop.models.configs import SCHEDULER, TINY_TEXT
from editloop.models.tokenizer import build_tokenizer
from editloop.models.zoo import save_pipeline

SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=9, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT: dict[str, Any] = {**TINY_TEXT, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                             "num_attention_heads": 12, "projection_dim": 768}


def sd15_components(seed: int = 0, inpainting: bool = True) -> dict[str, Any]:
    """Seeded, untrained SD-1.5-sized components (UNet for inpainting, or text-to-image with 4 input channels)."""
    torch.manual_seed(seed)
    return {"vae": AutoencoderKL(**SD15_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
            "tokenizer": build_tokenizer(),
            "unet": UNet2DConditionModel(**{**SD15_UNET, "in_channels": 9 if inpainting else 4}),
            "scheduler": DDIMScheduler(**SCHEDULER)}


def init_sd15(out: Path, seed: int = 0, inpainting: bool = True) -> Path:
    """Write the components to `out` in diffusers format (about 4.3 GB in fp32); returns `out`."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"`--out` {str(out)!r} exists and is not empty; give a new directory")
    save_pipeline(sd15_components(seed, inpainting), out)
    return out
