"""Shapes World v1 constants (../shared/WORLD.md): canvas, palette, shapes, sizes, grid."""

from __future__ import annotations

CANVAS = 64

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 5, "large": 9}  # half-extent in px

GRID = (12, 32, 52)
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (12, 12),
    "top": (32, 12),
    "top right": (52, 12),
    "left": (12, 32),
    "center": (32, 32),
    "right": (52, 32),
    "bottom left": (12, 52),
    "bottom": (32, 52),
    "bottom right": (52, 52),
}  # name -> (x, y) centre

# Degradation maxima at q = 1.
MAX_JITTER = 3  # px, per object, per axis
MAX_COLOR_SHIFT = 20  # per object, per channel
MAX_BLUR = 0.8  # Gaussian sigma, px
MAX_NOISE = 0.04  # Gaussian sigma on the 0..1 scale

# Every word a caption or an edit instruction can use (the tokenizer's vocabulary).
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", "at", "the", "and", "on", "background", "make", "turn", "into", "larger",
         "smaller", "move", "to", "remove", "add", "change", ","]
        + list(BACKGROUNDS) + list(COLORS) + list(SHAPES) + list(SIZES)
        + [word for name in POSITIONS for word in name.split()]
    )
)
