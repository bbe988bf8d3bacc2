"""Instruction editors (SeedEdit): image + instruction -> edited image, as a latent diffusion model.

Two architectures over the same diffusers classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel):
- `causal`: SeedEdit's two-branch editor. The UNet keeps 4 input channels; the input image's clean latent
  goes through the same UNet (timestep 0, empty text) and the noisy target attends to it through causal
  self-attention (editloop.models.causal_attention).
- `concat`: the InstructPix2Pix baseline. The input latent is concatenated to the noisy latent as 4 extra
  channels (8 in all); "no image" is a zero latent, as InstructPix2Pix trains it.
A model directory holds unet/, vae/, text_encoder/, tokenizer/, scheduler/ (each save_pretrained) and
editloop.json (kind "instruct", the architecture, the version and the sampling defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from editloop.models.card import read_card, write_card
from editloop.models.causal_attention import BranchState, install_causal_attention
from editloop.models.coord_unet import load_unet
from editloop.models.data import to_tensor
from editloop.models.pipeline_io import encode_texts
from editloop.models.zoo import native_size, pick_device

ARCHS = {"causal": 4, "concat": 8}  # architecture -> UNet input channels
KIND = "instruct"
DEFAULTS = {"default_steps": 20, "default_guidance": 5.0, "default_image_guidance": 1.5, "default_start": "noise",
            "default_guidance_rescale": 0.0}
POSITION_BIAS = 1.0  # the causal editor's target -> input distance bias (editloop.models.causal_attention)


@dataclass
class InstructEditor:
    arch: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: PreTrainedTokenizerFast
    scheduler: DDIMScheduler
    meta: dict[str, Any] = field(default_factory=dict)
    branches: BranchState | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"`arch` must be one of {list(ARCHS)}, got {self.arch!r}")
        need = ARCHS[self.arch]
        if self.unet.config.in_channels != need:
            raise ValueError(f"a {self.arch} editor needs a UNet with {need} input channels, "
                             f"got {self.unet.config.in_channels}")
        if self.arch == "causal" and self.branches is None:
            self.meta.setdefault("position_bias", POSITION_BIAS)
            self.branches = install_causal_attention(self.unet, float(self.meta["position_bias"]))

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: torch.device | str) -> InstructEditor:
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device)
        return self

    @property
    def native_size(self) -> int:
        return native_size(self)

    def setting(self, name: str) -> Any:
        return self.meta.get(name, DEFAULTS.get(name))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return encode_texts(self.tokenizer, self.text_encoder, texts)

    @torch.no_grad()
    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 N,H,W,3 (or N,3,H,W in [-1, 1]) -> scaled latents (the posterior mean: deterministic)."""
        x = to_tensor(list(images)) if isinstance(images, np.ndarray) else images
        x = x.to(self.device, self.vae.dtype)
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    def encode_input_branch(self, image_latents: torch.Tensor, empty_text: torch.Tensor) -> None:
        """Causal editor: run the input branch (t = 0, empty text) and keep each layer's K/V."""
        assert self.branches is not None
        self.branches.clear()
        self.branches.set_mode("encode")
        t0 = torch.zeros(len(image_latents), dtype=torch.long, device=image_latents.device)
        self.unet(image_latents, t0, empty_text.expand(len(image_latents), -1, -1))
        self.branches.set_mode("target")

    def eps(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor, image_latents: torch.Tensor | None,
            sees_input: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's prediction for the target rows (epsilon, or v on a v-prediction schedule).
        `sees_input` (B,) bool: the row is conditioned on its image.

        causal: the input branch must have been encoded (encode_input_branch); `rows` maps target rows to
        encoded rows. concat: `image_latents` are the rows' own input latents (zeroed where not seen).
        """
        if self.arch == "causal":
            assert self.branches is not None
            self.branches.rows, self.branches.sees_input = rows, sees_input
            return self.unet(noisy, t, text).sample
        assert image_latents is not None
        lat = image_latents if rows is None else image_latents[rows]
        lat = lat * sees_input[:, None, None, None].to(lat.dtype)
        return self.unet(torch.cat([noisy, lat], dim=1), t, text).sample

    def save(self, path: str | Path, meta: dict[str, Any]) -> None:
        path = Path(path)
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            getattr(self, name).save_pretrained(path / name)
        self.meta = {**DEFAULTS, **self.meta, **meta, "kind": KIND, "arch": self.arch}
        write_card(path, self.meta)


def is_instruct_dir(path: Path) -> bool:
    return read_card(Path(path)).get("kind") == KIND


def load_instruct_editor(path: str | Path, device: str | None = None) -> InstructEditor:
    """Load an instruction editor directory (offline), fp32 on the CPU."""
    path = Path(path)
    if not is_instruct_dir(path):
        raise ValueError(f"`model` {str(path)!r} is not an instruction editor (no editloop.json with kind "
                         f"{KIND!r}); train one with `editloop train align`")
    meta = read_card(path)
    kw = {"local_files_only": True}
    editor = InstructEditor(
        arch=meta["arch"],
        unet=load_unet(path / "unet"),
        vae=AutoencoderKL.from_pretrained(path / "vae", **kw),
        text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder", **kw),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(path / "tokenizer", **kw),
        scheduler=DDIMScheduler.from_pretrained(path / "scheduler", **kw),
        meta=meta,
    )
    editor.unet.float().eval()
    editor.text_encoder.float().eval()
    editor.vae.eval()
    return editor.to(pick_device(device))
