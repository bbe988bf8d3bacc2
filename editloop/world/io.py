"""PNG reading and writing with clear errors for the wrong size or mode."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from editloop.world.judge import check_image

# what a broken or hostile file makes PIL raise: not only OSError (a broken chunk stream is a SyntaxError, a header
# claiming a huge size a DecompressionBombError)
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _reason(exc: BaseException) -> str:
    """A short reason without PIL's object reprs (no heap addresses reach a client)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image PIL can identify"
    text = re.sub(r"<[^>]*>", "data", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return text[:80]


def _header(data: bytes, name: str, max_side: int | None = None) -> Image.Image:
    """Open PNG bytes, reading the header only (format, size, mode): nothing is decoded yet, so a size limit is
    checked for the cost of a few bytes. `load` decodes."""
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
    except _UNREADABLE as exc:
        raise ValueError(f"`{name}` is not a readable PNG ({len(data)} bytes: {_reason(exc)})") from None
    if max_side is not None and max(img.size) > max_side:
        raise ValueError(f"`{name}` is {img.size[0]}x{img.size[1]}; at most {max_side} pixels per side "
                         f"(read from its header, nothing decoded)")
    return img


def _load(img: Image.Image, data: bytes, name: str) -> Image.Image:
    try:
        img.load()
    except _UNREADABLE as exc:
        raise ValueError(f"`{name}` is not a readable PNG ({len(data)} bytes: {_reason(exc)})") from None
    return img


def to_png(image: np.ndarray) -> bytes:
    check_image(image)
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes, name: str = "image", size: int | None = 64, max_side: int | None = None) -> np.ndarray:
    """Decode PNG bytes to HxWx3 uint8; RGB only, and `size` x `size` unless size is None; a header claiming more
    than `max_side` pixels on a side is refused before decoding."""
    img = _header(data, name, max_side)
    if img.mode not in ("RGB", "RGBA"):
        raise ValueError(f"`{name}` must be RGB, got mode {img.mode}")
    if size is not None and img.size != (size, size):
        raise ValueError(f"`{name}` must be {size}x{size}, got {img.size[0]}x{img.size[1]}")
    return np.asarray(_load(img, data, name).convert("RGB"), dtype=np.uint8).copy()


def mask_from_png(data: bytes, name: str = "mask", size: int | None = 64, max_side: int | None = None) -> np.ndarray:
    """Decode a mask PNG (L, 1 or RGB; nonzero = regenerate) to a 0/1 uint8 array."""
    img = _header(data, name, max_side)
    if size is not None and img.size != (size, size):
        raise ValueError(f"`{name}` must be {size}x{size} like the image, got {img.size[0]}x{img.size[1]}")
    return (np.asarray(_load(img, data, name).convert("L")) > 127).astype(np.uint8)


def mask_to_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | Path) -> None:
    Path(path).write_bytes(to_png(image))


def save_grid_png(rows: list[list[np.ndarray]], path: str | Path, row_labels: list[str] | None = None,
                  captions: list[str] | None = None, title: str = "") -> None:
    """Tile rows of equally sized uint8 images into one PNG (for sample grids). With `row_labels` (one per row) and
    `captions` (one per column: the prompt or instruction each column's example was given) the grid is drawn with
    them, so a reader can tell what each row is and what each example was asked."""
    if row_labels is None and captions is None and not title:
        tiled = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
        Image.fromarray(tiled.astype(np.uint8), mode="RGB").save(path, format="PNG")
        return
    labelled_grid(rows, path, row_labels or [""] * len(rows), captions or [""] * len(rows[0]), title)


def labelled_grid(rows: list[list[np.ndarray]], path: str | Path, row_labels: list[str], captions: list[str],
                  title: str = "") -> None:
    """The grid drawn by matplotlib: each row named on its left, each column's caption (wrapped) above it."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    if len(row_labels) != n_rows or len(captions) != n_cols:
        raise ValueError(f"a grid of {n_rows} rows x {n_cols} columns needs {n_rows} row labels and {n_cols} "
                         f"captions, got {len(row_labels)} and {len(captions)}")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.45 * n_cols + 0.9, 1.45 * n_rows + 0.9), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(textwrap.fill(captions[c], 22), fontsize=6)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_png(path: str | Path) -> np.ndarray:
    return from_png(Path(path).read_bytes(), name=str(path))
