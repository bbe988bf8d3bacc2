"""Judge-based evaluation of the base models (used by the pretraining gate and bench/)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL

from editloop.models.data import to_tensor, to_uint8
from editloop.models.pipeline_io import inpaint_inputs, pipeline_to_uint8
from editloop.world.edits import edit_preservation, edit_success, make_edit
from editloop.world.judge import judge
from editloop.world.metrics import ATTRIBUTES, Comparison, compare, masked_l1
from editloop.world.render import render
from editloop.world.scene import Scene, sample_scene


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: list[np.ndarray], batch: int = 64) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 images through the VAE."""
    device = next(vae.parameters()).device
    outs = []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch]).to(device)
        z = vae.encode(x).latent_dist.mode()
        outs.append(to_uint8(vae.decode(z).sample))
    return np.concatenate(outs)


def vae_gate_accuracy(vae: AutoencoderKL, n: int = 200, seed: int = 10_000) -> float:
    """Judged caption accuracy of clean renders after a VAE round trip (held-out seed)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    recon = reconstruct(vae, [render(s) for s in scenes])
    return float(np.mean([compare(judge(img), s).all_correct for img, s in zip(recon, scenes)]))


@dataclass
class CaptionScores:
    caption_accuracy: float
    attribute_accuracy: float
    n: int
    per_attribute: dict[str, float]  # how often each judged flag was right (objects: over intended objects)


def attribute_rates(comparisons: list[Comparison]) -> dict[str, float]:
    """Per flag: background, no extra objects, and each object's presence and four attributes."""
    rates = {"background": float(np.mean([c.background for c in comparisons])),
             "no_extra": float(np.mean([c.no_extra for c in comparisons]))}
    rows = [row for c in comparisons for row in c.objects]
    for key in ("present", *ATTRIBUTES):
        rates[key] = float(np.mean([row[key] for row in rows]))
    return rates


def score_captions(images: np.ndarray, scenes: list[Scene]) -> CaptionScores:
    comps = [compare(judge(img), s) for img, s in zip(images, scenes)]
    return CaptionScores(
        float(np.mean([c.all_correct for c in comps])),
        float(np.mean([c.attribute_accuracy for c in comps])),
        len(comps),
        attribute_rates(comps),
    )


def generate(pipe, prompts: list[str], seed: int, steps: int = 20, guidance: float = 4.0,
             batch: int = 32) -> np.ndarray:
    """Text-to-image samples as uint8, one seeded generator per batch."""
    outs = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator("cpu").manual_seed(seed + i)
        res = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance,
                   generator=g, output_type="np")
        outs.append(pipeline_to_uint8(res.images))
    return np.concatenate(outs)


def inpaint(pipe, images: np.ndarray, masks: np.ndarray, prompts: list[str], seed: int,
            steps: int = 20, guidance: float = 4.0, batch: int = 32) -> np.ndarray:
    """Inpainting samples as uint8 (masks: N,64,64 with 1 = regenerate)."""
    outs = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator("cpu").manual_seed(seed + i)
        img, m = inpaint_inputs(images[i : i + batch], masks[i : i + batch])
        res = pipe(prompts[i : i + batch], image=img, mask_image=m, num_inference_steps=steps,
                   guidance_scale=guidance, generator=g, output_type="np", height=64, width=64)
        outs.append(pipeline_to_uint8(res.images))
    return np.concatenate(outs)


@dataclass
class EditScores:
    success: float
    preservation: float
    l1_outside: float
    n: int


def edit_scores(pipe, kind: str, n: int, seed: int, steps: int = 20, guidance: float = 4.0) -> EditScores:
    """Inpainting an object edit (e.g. `remove` = erase, `recolor`) on held-out clean scenes."""
    rng = np.random.default_rng(seed)
    edits = []
    while len(edits) < n:
        scene = sample_scene(rng, int(rng.integers(2, 4)) if kind == "remove" else None)
        try:
            edits.append(make_edit(scene, kind, rng))
        except ValueError:
            continue
    sources = np.stack([render(e.source) for e in edits])
    masks = np.stack([e.mask for e in edits])
    out = inpaint(pipe, sources, masks, [e.target.caption for e in edits], seed, steps, guidance)
    judged = [judge(img) for img in out]
    return EditScores(
        float(np.mean([edit_success(j, e) for j, e in zip(judged, edits)])),
        float(np.mean([edit_preservation(j, e) for j, e in zip(judged, edits)])),
        float(np.mean([masked_l1(o, s, m) for o, s, m in zip(out, sources, masks)])),
        n,
    )
