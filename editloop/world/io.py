"""PNG reading and writing with clear errors for the wrong size or mode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from editloop.world.judge import check_image


def _open(data: bytes, name: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"`{name}` is not a readable PNG ({len(data)} bytes): {exc}") from None
    return img


def to_png(image: np.ndarray) -> bytes:
    check_image(image)
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes, name: str = "image", size: int | None = 64) -> np.ndarray:
    """Decode PNG bytes to HxWx3 uint8; RGB only, and `size` x `size` unless size is None."""
    img = _open(data, name)
    if img.format != "PNG":
        raise ValueError(f"`{name}` must be PNG, got {img.format}")
    if img.mode not in ("RGB", "RGBA"):
        raise ValueError(f"`{name}` must be RGB, got mode {img.mode}")
    if size is not None and img.size != (size, size):
        raise ValueError(f"`{name}` must be {size}x{size}, got {img.size[0]}x{img.size[1]}")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def mask_from_png(data: bytes, name: str = "mask", size: int | None = 64) -> np.ndarray:
    """Decode a mask PNG (L, 1 or RGB; nonzero = regenerate) to a 0/1 uint8 array."""
    img = _open(data, name)
    if size is not None and img.size != (size, size):
        raise ValueError(f"`{name}` must be {size}x{size} like the image, got {img.size[0]}x{img.size[1]}")
    return (np.asarray(img.convert("L")) > 127).astype(np.uint8)


def mask_to_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | Path) -> None:
    Path(path).write_bytes(to_png(image))


def save_grid_png(rows: list[list[np.ndarray]], path: str | Path) -> None:
    """Tile rows of equally sized uint8 images into one PNG (for sample grids)."""
    tiled = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    Image.fromarray(tiled.astype(np.uint8), mode="RGB").save(path, format="PNG")


def load_png(path: str | Path) -> np.ndarray:
    return from_png(Path(path).read_bytes(), name=str(path))
