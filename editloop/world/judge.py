"""The judge: pixels in, scene out (WORLD.md "The judge"). No learned parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from editloop.world.palette import BACKGROUNDS, CANVAS, COLORS, POSITIONS

_PALETTE_NAMES = list(COLORS) + list(BACKGROUNDS)
_PALETTE = np.array([COLORS.get(n) or BACKGROUNDS[n] for n in _PALETTE_NAMES], dtype=np.float64)
_N_OBJECT_COLORS = len(COLORS)
_MAX_DISTANCE = 90.0
_MIN_AREA = 15
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class JudgedObject:
    shape: str
    color: str
    size: str
    position: str
    area: int
    fill_ratio: float
    centroid: tuple[float, float]  # (x, y)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 inclusive
    mask: np.ndarray  # filled component, bool HxW

    def to_dict(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}


@dataclass(frozen=True)
class JudgedScene:
    background: str
    objects: tuple[JudgedObject, ...]

    def to_dict(self) -> dict[str, object]:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate a 64x64 RGB uint8 array; raise naming the sizes received."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"`{name}` must be a numpy array, got {type(image).__name__}")
    if image.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"`{name}` must be {CANVAS}x{CANVAS} RGB (shape (64, 64, 3)), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"`{name}` must be uint8, got {image.dtype}")
    return image


def judge_background(image: np.ndarray) -> str:
    """Per-channel median of the four 6x6 corner patches, snapped to the nearest background."""
    patches = np.concatenate(
        [image[:6, :6], image[:6, -6:], image[-6:, :6], image[-6:, -6:]], axis=0
    ).reshape(-1, 3)
    median = np.median(patches.astype(np.float64), axis=0)
    names = list(BACKGROUNDS)
    dist = [np.linalg.norm(median - np.array(BACKGROUNDS[n])) for n in names]
    return names[int(np.argmin(dist))]


def color_labels(image: np.ndarray) -> np.ndarray:
    """Index of the object color for each pixel, or -1 (background-ish or too far)."""
    pixels = image.reshape(-1, 1, 3).astype(np.float64)
    dist = np.linalg.norm(pixels - _PALETTE[None], axis=2)
    nearest = dist.argmin(axis=1)
    best = dist[np.arange(len(nearest)), nearest]
    labels = np.where((nearest < _N_OBJECT_COLORS) & (best <= _MAX_DISTANCE), nearest, -1)
    return labels.reshape(image.shape[:2])


def nearest_position(x: float, y: float) -> str:
    names = list(POSITIONS)
    dist = [(POSITIONS[n][0] - x) ** 2 + (POSITIONS[n][1] - y) ** 2 for n in names]
    return names[int(np.argmin(dist))]


def classify_shape(fill_ratio: float) -> str:
    if fill_ratio > 0.88:
        return "square"
    if fill_ratio >= 0.62:
        return "circle"
    return "triangle"


def judge_objects(image: np.ndarray) -> tuple[JudgedObject, ...]:
    labels = color_labels(image)
    objects: list[JudgedObject] = []
    color_names = list(COLORS)
    for ci in range(_N_OBJECT_COLORS):
        components, count = ndimage.label(labels == ci, structure=_EIGHT)
        for k in range(1, count + 1):
            filled = ndimage.binary_fill_holes(components == k)
            area = int(filled.sum())
            if area < _MIN_AREA:
                continue
            ys, xs = np.nonzero(filled)
            x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
            w, h = x1 - x0 + 1, y1 - y0 + 1
            fill = area / (w * h)
            cx, cy = float(xs.mean()), float(ys.mean())
            objects.append(
                JudgedObject(
                    shape=classify_shape(fill),
                    color=color_names[ci],
                    size="large" if max(w, h) >= 15 else "small",
                    position=nearest_position(cx, cy),
                    area=area,
                    fill_ratio=fill,
                    centroid=(cx, cy),
                    bbox=(x0, y0, x1, y1),
                    mask=filled,
                )
            )
    objects.sort(key=lambda o: (o.bbox[1], o.bbox[0]))
    return tuple(objects)


def judge(image: np.ndarray) -> JudgedScene:
    """Read a scene back from pixels."""
    check_image(image)
    return JudgedScene(background=judge_background(image), objects=judge_objects(image))
