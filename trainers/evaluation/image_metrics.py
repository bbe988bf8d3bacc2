"""Pixel metrics of an edit against its source outside the edit region (what the edit should have kept):
mean L1 on 0..1, PSNR in dB and SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03), each over
the pixels where the mask is 0. They need no model weights, so they apply to any suite, the world's or a public
benchmark's."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from editloop.world.metrics import masked_l1

PSNR_CAP = 100.0  # dB, for pixels that are identical (a finite number the JSON and the mean can hold)


def _kept(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape[:2], dtype=bool)
    if mask.shape != shape[:2]:
        raise ValueError(f"`mask` must be {shape[:2]} like its image, got {mask.shape}")
    return mask == 0


def psnr_outside(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB, peak 255) between uint8 images a and b over the pixels where `mask` is 0."""
    keep = _kept(mask, a.shape)
    if not keep.any():
        return PSNR_CAP
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64))[keep] ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0**2 / mse))


def ssim_map(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel SSIM of two uint8 H,W,3 images, averaged over the channels (H,W)."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sigma=(sigma, sigma, 0), mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=2)


def ssim_outside(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM over the pixels where `mask` is 0 (1.0 when nothing is kept)."""
    keep = _kept(mask, a.shape)
    return float(ssim_map(a, b)[keep].mean()) if keep.any() else 1.0


def outside_metrics(output: np.ndarray, source: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
    """L1, PSNR and SSIM of `output` against `source` outside `mask` (the whole image when it is None); NaN when the
    mask covers everything (a background edit keeps no pixel)."""
    m = np.zeros(output.shape[:2], dtype=np.uint8) if mask is None else mask
    if (m != 0).all():
        return {"l1_outside": float("nan"), "psnr_outside": float("nan"), "ssim_outside": float("nan")}
    return {"l1_outside": masked_l1(output, source, m), "psnr_outside": psnr_outside(output, source, m),
            "ssim_outside": ssim_outside(output, source, m)}
