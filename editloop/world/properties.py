"""Measurable image properties, from pixels only (WORLD.md "Quality")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from editloop.world.judge import JudgedScene, judge
from editloop.world.palette import BACKGROUNDS, COLORS, POSITIONS


@dataclass(frozen=True)
class ImageProperties:
    sharpness: float  # border gradient over object/background contrast; higher is sharper
    noise: float  # std of the Laplacian (0..1 scale) in flat background; higher is noisier
    color_error: float  # mean RGB distance (0..1 scale) of object pixels to their palette color
    centring: float  # mean distance in px of object centroids from their cell centres

    def as_array(self) -> np.ndarray:
        return np.array([self.sharpness, self.noise, self.color_error, self.centring])


def measure(image: np.ndarray, judged: JudgedScene | None = None) -> ImageProperties:
    judged = judged or judge(image)
    img = image.astype(np.float64) / 255.0
    gray = img.mean(axis=2)
    objects = np.zeros(gray.shape, dtype=bool)
    for o in judged.objects:
        objects |= o.mask

    # 1. sharpness: gradient energy on the ring around each object, over its colour contrast
    gy, gx = np.gradient(img, axis=(0, 1))
    grad = np.sqrt((gx**2 + gy**2).sum(axis=2))
    background = np.array(BACKGROUNDS[judged.background]) / 255.0
    ratios = []
    for o in judged.objects:
        ring = ndimage.binary_dilation(o.mask) & ~ndimage.binary_erosion(o.mask)
        contrast = np.linalg.norm(np.array(COLORS[o.color]) / 255.0 - background)
        ratios.append(grad[ring].mean() / max(contrast, 1e-3))
    sharpness = float(np.mean(ratios)) if ratios else 0.0

    # 2. noise: high-frequency energy where the background is flat (away from objects)
    far = ~ndimage.binary_dilation(objects, iterations=4)
    far[:2, :] = far[-2:, :] = False
    far[:, :2] = far[:, -2:] = False
    lap = ndimage.laplace(gray)
    noise = float(lap[far].std()) if far.sum() > 16 else 0.0

    # 3. colour purity: distance of object pixels (eroded, away from blur) to their palette colour
    errors = []
    for o in judged.objects:
        core = ndimage.binary_erosion(o.mask, iterations=2)
        core = core if core.any() else o.mask
        errors.append(np.linalg.norm(img[core] - np.array(COLORS[o.color]) / 255.0, axis=1).mean())
    color_error = float(np.mean(errors)) if errors else 0.0

    # 4. centring: centroid distance from the cell centre
    dists = [np.hypot(o.centroid[0] - POSITIONS[o.position][0], o.centroid[1] - POSITIONS[o.position][1])
             for o in judged.objects]
    centring = float(np.mean(dists)) if dists else 0.0
    return ImageProperties(sharpness, noise, color_error, centring)
