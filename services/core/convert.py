"""Messages <-> arrays, with errors that name the field."""

from __future__ import annotations

import numpy as np

from editloop.world.io import from_png, mask_from_png, to_png
from services.core.errors import InvalidArgument

MAX_SIDE = 1024


def decode_image(png: bytes, field: str) -> np.ndarray:
    if not png:
        raise InvalidArgument(f"`{field}` is empty; send PNG bytes")
    try:
        image = from_png(png, name=field, size=None, max_side=MAX_SIDE)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    h, w = image.shape[:2]
    if h % 8 or w % 8 or max(h, w) > MAX_SIDE:
        raise InvalidArgument(f"`{field}` must be a multiple of 8 on each side and at most {MAX_SIDE}, got {w}x{h}")
    return image


def decode_mask(png: bytes, field: str, like: np.ndarray) -> np.ndarray:
    if not png:
        raise InvalidArgument(f"`{field}` is empty; send a PNG mask (non-zero = regenerate)")
    h, w = like.shape[:2]
    try:
        mask = mask_from_png(png, name=field, size=None, max_side=max(h, w))
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if mask.shape != (h, w):
        raise InvalidArgument(f"`{field}` must be {w}x{h} like the image, got {mask.shape[1]}x{mask.shape[0]}")
    return mask


def encode_image(image: np.ndarray) -> bytes:
    if image.shape[:2] == (64, 64):
        return to_png(image)
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
