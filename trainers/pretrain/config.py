"""Pretraining config: defaults with a comment on each (nanoGPT style)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

STAGES = ("vae", "text", "t2i", "inpaint")
DEFAULT_STAGES = STAGES  # the committed base's recipe (editloop/weights/README.md): the defaults below are its settings


@dataclass
class PretrainConfig:
    out: Path = Path("runs/pretrain")  # checkpoints and the finished diffusers directories
    seed: int = 0  # data and initialisation seed; data for step s of a stage is a function of it
    stages: tuple[str, ...] = DEFAULT_STAGES  # stages to run, in order; without "text" the t2i stage trains its own
    # VAE
    vae_steps: int = 6000  # maximum steps; stops earlier once the judge gate passes (the committed VAE: 3400)
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6  # KL weight (a near-deterministic autoencoder, as in SD)
    vae_edge_boost: float = 20.0  # extra loss weight on pixels beside a colour edge
    vae_gate: float = 0.98  # judged caption accuracy of clean reconstructions required; 0 = off
    # text encoder pretrained contrastively against the world's images (trainers/pretrain/text.py); the
    # text-to-image stage starts from it when OUT/text exists, else trains its text encoder from scratch (with the UNet)
    text_steps: int = 1000
    text_batch: int = 128
    text_lr: float = 1e-3
    text_freeze: bool = True  # keep the pretrained text encoder frozen in the text-to-image stage (SD keeps CLIP)
    # text-to-image (the UNet, on stage "text"'s encoder; without that stage, with its own encoder trained jointly)
    t2i_steps: int = 6000
    t2i_batch: int = 32
    t2i_lr: float = 5e-4
    schedule: str = "zero-snr-v"  # noise schedule: "sd" (scaled_linear, epsilon) or "zero-snr-v" (Lin et al., 2024)
    coord_channels: int = 2  # x / y coordinate maps appended to the UNet input (CoordUNet2DConditionModel); 0: none
    # inpainting (initialised from the text-to-image UNet; extra input channels start at zero)
    inpaint_steps: int = 2500
    inpaint_batch: int = 32
    inpaint_lr: float = 3e-4
    # shared
    warmup: int = 100  # linear learning-rate warm-up steps, then cosine decay to 10% at the last step
    ema: float = 0.999  # EMA decay of the diffusion weights; the EMA weights are what is saved
    caption_dropout: float = 0.1  # empty caption rate, for classifier-free guidance
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al., 2023); 0 = plain MSE
    checkpoint_every: int = 200  # steps between resumable checkpoints
    eval_n: int = 200  # images for the judge gate
    device: str | None = None  # default: cuda if present, else cpu
    dtype: str | None = None  # autocast dtype on cuda (bf16 default); cpu trains in fp32
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.stages = tuple(self.stages)
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"`stages` must be drawn from {list(STAGES)}, got {unknown}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_steps", "_batch")) and (not isinstance(value, int) or value < 0):
                raise ValueError(f"`{f.name}` must be a non-negative integer, got {value!r}")
            if f.name == "schedule" and value not in ("sd", "zero-snr-v"):
                raise ValueError(f"`schedule` must be one of ['sd', 'zero-snr-v'], got {value!r}")
            if f.name == "coord_channels" and value not in (0, 2):
                raise ValueError(f"`coord_channels` must be 0 or 2, got {value!r}")
            if f.name.endswith("_batch") and value < 1:
                raise ValueError(f"`{f.name}` must be >= 1, got {value}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["stages"] = list(self.stages)
        return d


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PretrainConfig()
    for f in fields(PretrainConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "stages":
            parser.add_argument(flag, nargs="+", default=list(default), choices=STAGES)
        elif f.name == "out":
            parser.add_argument(flag, type=Path, default=default)
        elif f.name == "schedule":
            parser.add_argument(flag, default=default, choices=("sd", "zero-snr-v"))
        elif f.name in ("device", "dtype"):
            parser.add_argument(flag, default=default)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    names = {f.name for f in fields(PretrainConfig)}
    return PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})


