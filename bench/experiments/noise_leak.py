"""How much of the layout a noise schedule leaves visible at its last steps, on Shapes World latents.

    .venv/bin/python bench/noise_leak.py          # ~30 s on 2 CPU cores

A diffusion model trained where the noisy latent still shows where the object is learns to read the
layout from the noise (Lin et al., 2024, "Common diffusion noise schedules and sample steps are
flawed"); sampling then starts from pure noise, and the initial noise, not the caption, decides
where the object goes. The test here: encode single-object renders with the base VAE, noise them
to step t of a schedule, and let a simple energy detector (no learning) guess the object's grid cell
from the noisy latent: the mean deviation from the image's median latent inside each cell, squared,
largest wins. Chance is 1/9. A trained network reads more than this detector does, so these are
lower bounds on the leak. Writes bench/results/noise_leak.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler

from editloop.models.data import to_tensor
from editloop.world import render, sample_scene
from editloop.world.palette import POSITIONS

RESULTS = Path(__file__).resolve().parents[1] / "results"
SCHEDULES = {
    "scaled_linear 0.00085-0.012 (Stable Diffusion; the base models)":
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "scaled_linear rescaled to zero terminal SNR (Lin et al.)":
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
    "linear 0.0001-0.02 (DDPM)": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
}
TIMESTEPS = (999, 951, 901, 851, 801)


def cell_energy_guess(latents: torch.Tensor, scale: float) -> np.ndarray:
    """Index of the grid cell whose 4x4 latent window deviates most from the image's median latent."""
    background = latents.flatten(2).median(dim=2).values[:, :, None, None]
    deviation = latents - background
    scores = []
    for px, py in POSITIONS.values():
        cx, cy = round(px * scale), round(py * scale)
        window = deviation[:, :, cy - 2 : cy + 2, cx - 2 : cx + 2]
        scores.append((window.mean(dim=(2, 3)) ** 2).sum(1))
    return torch.stack(scores, 1).argmax(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vae", type=Path, default=Path("editloop/weights/base/t2i/vae"))
    parser.add_argument("--n", type=int, default=300, help="single-object scenes")
    parser.add_argument("--repeats", type=int, default=5, help="noise draws per scene")
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True).eval()
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, 1) for _ in range(args.n)]
    truth = np.array([list(POSITIONS).index(s.objects[0].position) for s in scenes])
    with torch.no_grad():
        z = vae.encode(to_tensor([render(s) for s in scenes])).latent_dist.mode() * vae.config.scaling_factor
    scale = z.shape[-1] / 64
    report: dict[str, object] = {"n": args.n, "repeats": args.repeats, "chance": 1 / len(POSITIONS),
                                 "clean_latents": float(np.mean(cell_energy_guess(z, scale) == truth))}
    for name, kw in SCHEDULES.items():
        alphas = DDPMScheduler(num_train_timesteps=1000, **kw).alphas_cumprod
        rows = {}
        for t in TIMESTEPS:
            a = float(alphas[t])
            hits = []
            for rep in range(args.repeats):
                noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(rep))
                noisy = a**0.5 * z + (1 - a) ** 0.5 * noise
                hits.append(np.mean(cell_energy_guess(noisy, scale) == truth))
            rows[str(t)] = {"alpha_bar": a, "cell_found": float(np.mean(hits))}
            print(f"{name:62s} t={t} alpha_bar={a:.2e} cell found from the noisy latent: {np.mean(hits):.2f}")
        report[name] = rows
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "noise_leak.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
