"""Build, save and load the latent diffusion components and pipelines.

Every component saves with `save_pretrained` and loads with `from_pretrained`, so a
diffusers-format directory (ours or a real Stable Diffusion checkpoint) goes through the
same entry points. Nothing here downloads: paths only, `local_files_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel

from editloop.models.configs import SCHEDULER, TINY_TEXT, TINY_VAE, tiny_unet
from editloop.models.coord_unet import load_unet, new_unet
from editloop.models.tokenizer import build_tokenizer

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm": DPMSolverMultistepScheduler,
}


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU; `device` overrides."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """fp32 on CPU; bf16 on CUDA when supported, else fp16; `dtype` overrides."""
    if dtype:
        choices = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if dtype not in choices:
            raise ValueError(f"`dtype` must be one of {list(choices)}, got {dtype!r}")
        return choices[dtype]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def tiny_components(seed: int = 0, inpainting: bool = False, coord_channels: int = 0) -> dict[str, Any]:
    """Seeded, untrained tiny components (tests, and the start of pretraining)."""
    torch.manual_seed(seed)
    return {
        "vae": AutoencoderKL(**TINY_VAE),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**TINY_TEXT)),
        "tokenizer": build_tokenizer(),
        "unet": new_unet(tiny_unet(9 if inpainting else 4), coord_channels),
        "scheduler": DDIMScheduler(**SCHEDULER),
    }


def training_scheduler(config: Any = None) -> DDPMScheduler:
    """The noise schedule to train on: a model's own (its saved scheduler config) when fine-tuning one,
    the built-in SCHEDULER for a model trained from scratch."""
    if config is not None:
        return DDPMScheduler.from_config(config)
    return DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k != "set_alpha_to_one"})


def predicted_x0(scheduler: Any, sample: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The clean latent a model's output implies at timestep(s) `t`, for epsilon and v-prediction
    (Salimans & Ho, 2022): x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) = sqrt(abar) x_t - sqrt(1 - abar) v."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    abar = scheduler.alphas_cumprod.to(sample.device)[t.long()].to(sample.dtype)
    abar = abar.reshape(-1, *([1] * (sample.dim() - 1))) if abar.dim() else abar
    if kind == "epsilon":
        return (sample - (1 - abar).sqrt() * pred) / abar.sqrt()
    if kind == "v_prediction":
        return abar.sqrt() * sample - (1 - abar).sqrt() * pred
    raise ValueError(f"`prediction_type` must be 'epsilon' or 'v_prediction', got {kind!r}")


def set_scheduler(pipe: Any, name: str) -> Any:
    if name not in SCHEDULERS:
        raise ValueError(f"`scheduler` must be one of {list(SCHEDULERS)}, got {name!r}")
    if not isinstance(pipe.scheduler, SCHEDULERS[name]):
        pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)
    return pipe


def set_timestep_spacing(pipe: Any, spacing: str) -> Any:
    """The same scheduler with its inference timesteps spaced `spacing` ("leading", "trailing", "linspace")."""
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, timestep_spacing=spacing)
    return pipe


def make_pipeline(components: dict[str, Any]) -> StableDiffusionPipeline | StableDiffusionInpaintPipeline:
    """The diffusers pipeline matching the UNet: 4 input channels -> text-to-image, 9 -> inpainting."""
    in_ch = components["unet"].config.in_channels
    cls = {4: StableDiffusionPipeline, 9: StableDiffusionInpaintPipeline}.get(in_ch)
    if cls is None:
        raise ValueError(f"`unet.in_channels` must be 4 (text-to-image) or 9 (inpainting), got {in_ch}")
    pipe = cls(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def native_size(pipe: Any) -> int:
    """The side of the images a pipeline makes: its UNet's latent size times the VAE's downsampling."""
    return int(pipe.unet.config.sample_size) * 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def load_pipeline(
    path: str | Path, kind: str, device: str | None = None, dtype: str | None = None
) -> StableDiffusionPipeline | StableDiffusionInpaintPipeline:
    """Load a diffusers-format directory as a `t2i` or `inpaint` pipeline, offline."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ValueError(f"`model` {str(path)!r} is not a diffusers directory (no model_index.json)")
    classes = {"t2i": StableDiffusionPipeline, "inpaint": StableDiffusionInpaintPipeline}
    if kind not in classes:
        raise ValueError(f"`kind` must be one of {list(classes)}, got {kind!r}")
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    pipe = classes[kind].from_pretrained(  # the UNet by the class its config names (CoordUNet or diffusers')
        path, local_files_only=True, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, dtype=torch_dtype, unet=load_unet(path / "unet", dtype=torch_dtype),
    )
    if kind == "inpaint" and pipe.unet.config.in_channels != 9:
        raise ValueError(
            f"`model` {str(path)!r} has no inpainting UNet (in_channels={pipe.unet.config.in_channels}, need 9)"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def save_pipeline(components: dict[str, Any], path: str | Path) -> None:
    make_pipeline(components).save_pretrained(path, safe_serialization=True)
