"""Built-in tiny configs, sized for the 64x64 Shapes World and a CPU.

The classes are the ones real checkpoints use (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel), so a real Stable Diffusion directory loads into the same code paths.
"""

from __future__ import annotations

from typing import Any

from editloop.models.tokenizer import MAX_LENGTH, SPECIAL
from editloop.world.palette import VOCABULARY

# 64x64 RGB -> 16x16x4 latents (downsampling 4 = 2 ** (len(block_out_channels) - 1))
TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    mid_block_add_attention=False,  # flat-colour scenes need no global attention; 2x faster on CPU
)

TINY_TEXT: dict[str, Any] = dict(
    vocab_size=len(SPECIAL) + len(VOCABULARY),
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    projection_dim=128,
)


def tiny_unet(in_channels: int = 4) -> dict[str, Any]:
    """UNet over 16x16x4 latents; `in_channels=9` is the inpainting variant (latent, mask, masked)."""
    return dict(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        cross_attention_dim=TINY_TEXT["hidden_size"],
        attention_head_dim=16,
        norm_num_groups=16,
    )


# Stable Diffusion's scaled_linear schedule. Its last step leaves the layout visible at this size
# (bench/noise_leak.py), and the base model reads positions from the initial noise; DDPM's linear
# schedule hides it but, with epsilon prediction and the same 2500 CPU steps, trained a worse model
# (BENCHMARKS.md: base models, "who decides the layout"). Zero terminal SNR wants v-prediction.
# Inference timesteps are "trailing" (Lin et al., 2024, section 3.3): the first step at t = 999, where
# sampling's pure noise belongs, at any step count. Stable Diffusion's own config spaces them "leading"
# (steps_offset 1: 20 steps start at t = 951, 8 at t = 876); the same base weights sample better with
# trailing at 20 steps and far better at 8 (bench/step_spacing.py, bench/world_models.py). Training
# is unaffected: spacing only picks the timesteps a sampler visits.
SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="trailing",
)

# Zero terminal SNR (Lin et al., 2024): the same betas rescaled so the last step is pure noise, with
# v-prediction (epsilon is undefined there) and trailing timesteps, so sampling starts at t = 999.
ZERO_SNR_V_SCHEDULER: dict[str, Any] = dict(
    SCHEDULER, rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
    steps_offset=0,
)
SCHEDULES: dict[str, dict[str, Any]] = {"sd": SCHEDULER, "zero-snr-v": ZERO_SNR_V_SCHEDULER}


def check_schedule(name: str) -> None:
    """A schedule name must be one of SCHEDULES; the error names the field and the value."""
    if name not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}, got {name!r}")
