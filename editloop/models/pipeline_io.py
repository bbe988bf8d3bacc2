"""Arrays in and out of the diffusers pipelines, shared by services, trainers and evaluation."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def pipeline_to_uint8(images: np.ndarray) -> np.ndarray:
    """A pipeline's `output_type="np"` images (N,H,W,3 in [0, 1]) as uint8."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def per_image_generators(seeds: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per image, so an image's noise depends on its seed alone, not on its batch."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def inpaint_inputs(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N,H,W,3) and {0,1} masks (N,H,W) as the inpainting pipeline's [0, 1] tensors."""
    image_t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mask_t = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None]
    return image_t, mask_t


def token_ids(tokenizer, texts: list[str], device: torch.device | str) -> torch.Tensor:
    """(N, L) token ids, padded to the tokenizer's length, as the text encoders are trained and read (no
    attention mask)."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def text_states(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """(N, L, D) text states of `token_ids`; with gradients, for training the text encoder."""
    return text_encoder(token_ids(tokenizer, texts, text_encoder.device))[0]


@torch.no_grad()
def encode_texts(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """text_states without gradients (sampling, frozen encoders)."""
    return text_states(tokenizer, text_encoder, texts)
