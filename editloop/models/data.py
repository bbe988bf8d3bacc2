"""Training batches drawn from the Shapes World (the "weak generator" quality mix)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from editloop.world.edits import sample_edit
from editloop.world.masks import OUTPAINT_LAYOUTS, cell_mask, outpaint_mask
from editloop.world.palette import POSITIONS
from editloop.world.render import Quality, render, sample_quality
from editloop.world.scene import Scene, sample_scene


@dataclass
class Batch:
    images: torch.Tensor  # N,3,64,64 in [-1, 1]
    captions: list[str]
    scenes: list[Scene]
    masks: torch.Tensor | None = None  # N,1,64,64 in {0, 1}; 1 = regenerate


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def edit_context(sources: Sequence[np.ndarray | None], masks: Sequence[np.ndarray | None], height: int,
                 width: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A reward's edit inputs for a batch that mixes edits and plain images: sources (N,3,H,W in [-1, 1]) and
    masks (N,1,H,W, 1 = regenerated), (None, None) when no item has a source. An item without a source gets
    zeros in both, which is what the model sees for a batch without sources (giving an image as its own
    source would tell a preference model which of a pair's two images the label preferred); a mask counts
    only with its source."""
    if all(s is None for s in sources):
        return None, None
    source = torch.zeros(len(sources), 3, height, width)
    mask = torch.zeros(len(sources), 1, height, width)
    for i, (s, m) in enumerate(zip(sources, masks, strict=True)):
        if s is None:
            continue
        source[i] = to_tensor([s])[0]
        if m is not None:
            mask[i, 0] = torch.from_numpy(np.asarray(m, dtype=np.float32))
    return source, mask


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N,3,H,W in [-1, 1] -> N,H,W,3 uint8."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The data of step `step` depends only on (seed, stage, step): resuming replays nothing."""
    return np.random.default_rng([seed, sum(map(ord, stage)), step])


def quality_mix_batch(rng: np.random.Generator, n: int, clean_fraction: float = 0.0) -> Batch:
    """Scenes with q ~ U[0, 1] per image (a `clean_fraction` rendered clean)."""
    images, captions, scenes = [], [], []
    for _ in range(n):
        scene = sample_scene(rng)
        if rng.random() < clean_fraction:
            quality = Quality()
        else:
            quality = sample_quality(rng, len(scene.objects), float(rng.uniform()))
        images.append(render(scene, quality))
        captions.append(scene.caption)
        scenes.append(scene)
    return Batch(to_tensor(images), captions, scenes)


def random_mask(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, Scene]:
    """An inpainting mask and the scene the result should show.

    A third each: an object edit's cell mask (target = the edit's target scene), an empty or
    occupied cell (target = the scene itself), an outpainting layout (target = the scene).
    """
    pick = rng.random()
    if pick < 1 / 3:
        edit = sample_edit(rng, scene)
        if edit.kind != "background":
            return edit.mask, edit.target
    if pick < 2 / 3:
        cell = list(POSITIONS)[rng.integers(len(POSITIONS))]
        return cell_mask(cell), scene
    return outpaint_mask(OUTPAINT_LAYOUTS[rng.integers(len(OUTPAINT_LAYOUTS))]), scene


def inpaint_batch(rng: np.random.Generator, n: int) -> Batch:
    """Target images (quality mix) with masks; the caption describes the target."""
    images, captions, scenes, masks = [], [], [], []
    for _ in range(n):
        source = sample_scene(rng)
        mask, target = random_mask(rng, source)
        quality = sample_quality(rng, len(target.objects), float(rng.uniform()))
        images.append(render(target, quality))
        captions.append(target.caption)
        scenes.append(target)
        masks.append(mask)
    mask_t = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]
    return Batch(to_tensor(images), captions, scenes, mask_t)
