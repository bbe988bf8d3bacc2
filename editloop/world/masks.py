"""Inpainting, erasing and outpainting masks (WORLD.md "Edits"); 1 = regenerate."""

from __future__ import annotations

import numpy as np

from editloop.world.palette import CANVAS, POSITIONS

CELL_HALF = 10  # a 21x21 square around a cell centre
OUTPAINT_LAYOUTS = ("center32", "center48", "left", "right", "top", "bottom")


def cell_mask(*positions: str) -> np.ndarray:
    """uint8 64x64 mask with the 21x21 squares around the named cell centres set to 1."""
    mask = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for name in positions:
        if name not in POSITIONS:
            raise ValueError(f"`position` must be one of {sorted(POSITIONS)}, got {name!r}")
        x, y = POSITIONS[name]
        mask[max(0, y - CELL_HALF) : y + CELL_HALF + 1, max(0, x - CELL_HALF) : x + CELL_HALF + 1] = 1
    return mask


def outpaint_mask(layout: str) -> np.ndarray:
    """Known region: a centred 32x32 / 48x48 crop, or the left/right/top/bottom half; rest = 1.

    `left` keeps the left 32x64 half (the right half is generated), and so on.
    """
    mask = np.ones((CANVAS, CANVAS), dtype=np.uint8)
    half = CANVAS // 2
    if layout == "center32":
        mask[16:48, 16:48] = 0
    elif layout == "center48":
        mask[8:56, 8:56] = 0
    elif layout == "left":
        mask[:, :half] = 0
    elif layout == "right":
        mask[:, half:] = 0
    elif layout == "top":
        mask[:half, :] = 0
    elif layout == "bottom":
        mask[half:, :] = 0
    else:
        raise ValueError(f"`layout` must be one of {list(OUTPAINT_LAYOUTS)}, got {layout!r}")
    return mask


def check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Validate a 64x64 binary mask; raise naming the shape or values received."""
    if not isinstance(mask, np.ndarray) or mask.shape != (CANVAS, CANVAS):
        shape = getattr(mask, "shape", None)
        raise ValueError(f"`{name}` must be {CANVAS}x{CANVAS} like the image, got shape {shape}")
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1}:
        raise ValueError(f"`{name}` must hold only 0 and 1, got values {values[:5].tolist()}")
    return mask.astype(np.uint8)
