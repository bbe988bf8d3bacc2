"""Deterministic renderer with the four quality degradations (WORLD.md "Quality")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from editloop.world.palette import (
    BACKGROUNDS,
    CANVAS,
    COLORS,
    MAX_BLUR,
    MAX_COLOR_SHIFT,
    MAX_JITTER,
    MAX_NOISE,
    POSITIONS,
    SIZES,
)
from editloop.world.scene import Scene, SceneObject


@dataclass(frozen=True)
class Quality:
    """Concrete degradation values for one rendering; all zero is a clean render."""

    jitter: tuple[tuple[int, int], ...] = field(default_factory=tuple)  # (dx, dy) per object
    color_shift: tuple[tuple[int, int, int], ...] = field(default_factory=tuple)  # per object
    blur: float = 0.0  # Gaussian sigma in px
    noise: float = 0.0  # Gaussian sigma on the 0..1 scale
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.blur <= MAX_BLUR + 1e-9:
            raise ValueError(f"`blur` must be in [0, {MAX_BLUR}], got {self.blur}")
        if not 0.0 <= self.noise <= MAX_NOISE + 1e-9:
            raise ValueError(f"`noise` must be in [0, {MAX_NOISE}], got {self.noise}")
        for dx, dy in self.jitter:
            if max(abs(dx), abs(dy)) > MAX_JITTER:
                raise ValueError(f"`jitter` must be within ±{MAX_JITTER} px, got {(dx, dy)}")
        for shift in self.color_shift:
            if max(abs(c) for c in shift) > MAX_COLOR_SHIFT:
                raise ValueError(f"`color_shift` must be within ±{MAX_COLOR_SHIFT}, got {shift}")

    @property
    def is_clean(self) -> bool:
        return (
            not any(any(j) for j in self.jitter)
            and not any(any(c) for c in self.color_shift)
            and self.blur == 0.0
            and self.noise == 0.0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "jitter": [list(j) for j in self.jitter],
            "color_shift": [list(c) for c in self.color_shift],
            "blur": self.blur,
            "noise": self.noise,
            "noise_seed": self.noise_seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quality:
        return cls(
            jitter=tuple(tuple(j) for j in data.get("jitter", ())),
            color_shift=tuple(tuple(c) for c in data.get("color_shift", ())),
            blur=float(data.get("blur", 0.0)),
            noise=float(data.get("noise", 0.0)),
            noise_seed=int(data.get("noise_seed", 0)),
        )


def sample_quality(rng: np.random.Generator, n_objects: int, q: float = 1.0) -> Quality:
    """Draw each degradation uniformly in its range scaled by `q` (q = 0 is clean)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"`q` must be in [0, 1], got {q}")
    jit = int(round(MAX_JITTER * q))
    shift = int(round(MAX_COLOR_SHIFT * q))
    return Quality(
        jitter=tuple(tuple(int(v) for v in rng.integers(-jit, jit + 1, size=2)) for _ in range(n_objects)),
        color_shift=tuple(
            tuple(int(v) for v in rng.integers(-shift, shift + 1, size=3)) for _ in range(n_objects)
        ),
        blur=float(rng.uniform(0.0, MAX_BLUR * q)),
        noise=float(rng.uniform(0.0, MAX_NOISE * q)),
        noise_seed=int(rng.integers(2**31)),
    )


def shape_mask(obj: SceneObject, dx: int = 0, dy: int = 0) -> np.ndarray:
    """Boolean 64x64 coverage of one object (no anti-aliasing in v1)."""
    cx, cy = POSITIONS[obj.position]
    cx, cy = cx + dx, cy + dy
    h = SIZES[obj.size]
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS]
    if obj.shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= h * h
    in_box_rows = (ys >= cy - h) & (ys <= cy + h)
    if obj.shape == "square":
        return in_box_rows & (xs >= cx - h) & (xs <= cx + h)
    # triangle: apex at the top of the box, base spanning the bottom row of the box
    half_width = (ys - (cy - h)) // 2
    return in_box_rows & (np.abs(xs - cx) <= half_width)


def render(scene: Scene, quality: Quality | None = None) -> np.ndarray:
    """Render `scene` to a 64x64x3 uint8 array; deterministic in (scene, quality)."""
    quality = quality or Quality()
    n = len(scene.objects)
    jitter = quality.jitter or ((0, 0),) * n
    shifts = quality.color_shift or ((0, 0, 0),) * n
    if len(jitter) != n or len(shifts) != n:
        raise ValueError(
            f"`quality` has {len(jitter)} jitters and {len(shifts)} color shifts for {n} objects"
        )
    image = np.empty((CANVAS, CANVAS, 3), dtype=np.float64)
    image[:] = BACKGROUNDS[scene.background]
    for obj, (dx, dy), shift in zip(scene.objects, jitter, shifts):
        color = np.clip(np.array(COLORS[obj.color]) + np.array(shift), 0, 255)
        image[shape_mask(obj, dx, dy)] = color
    if quality.blur > 0:
        image = gaussian_filter(image, sigma=(quality.blur, quality.blur, 0), mode="nearest")
    if quality.noise > 0:
        noise_rng = np.random.default_rng(quality.noise_seed)
        image = image + noise_rng.normal(0.0, quality.noise * 255.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
