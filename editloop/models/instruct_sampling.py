"""Sampling an instruction editor: DDIM with classifier-free guidance over text and image (two scales).

As InstructPix2Pix defines it, with three predictions per image per step:
    eps = eps(no image, no text) + s_I * (eps(image, no text) - eps(no image, no text))
                                 + s_T * (eps(image, text) - eps(image, no text))
The causal editor encodes each input image once (its branch does not depend on the step) and reuses its
attention keys and values at every step.

Where sampling starts (`start`): "noise" is InstructPix2Pix's pure Gaussian noise. "input" is the input
image's latent noised to the first timestep, x_T = sqrt(abar_T) z_input + sqrt(1 - abar_T) eps: what the
editor saw at that timestep in training wherever the target equals the input. A schedule whose last step
keeps signal (SD's scaled_linear: abar_999 = 0.0047, bench/noise_leak.py) trains the model to read low
frequencies (background, layout) from x_T; pure noise then hands it the seed's (Lin et al., 2024, section
3.1; bench/edit_noise_source.py). Starting from the noised input is img2img at strength 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from editloop.models.data import to_uint8
from editloop.models.instruct import InstructEditor
from editloop.models.pipeline_io import per_image_generators

MAX_GUIDANCE = 10.0
STARTS = ("noise", "input")


def check_start(start: str) -> None:
    if start not in STARTS:
        raise ValueError(f"`start` must be one of {list(STARTS)}, got {start!r}")


def initial_latents(scheduler, image_latents: torch.Tensor, noise: torch.Tensor, start: str) -> torch.Tensor:
    """x_T for the first timestep of `scheduler` (already set): pure noise, or the input noised to it."""
    check_start(start)
    if start == "noise":
        return noise * scheduler.init_noise_sigma
    first = scheduler.timesteps[:1].expand(len(noise))
    return scheduler.add_noise(image_latents, noise, first)


def check_guidance(text_guidance: float, image_guidance: float) -> None:
    for name, value in (("guidance", text_guidance), ("image_guidance", image_guidance)):
        if not 0.0 <= value <= MAX_GUIDANCE:
            raise ValueError(f"`{name}` must be in [0, {MAX_GUIDANCE}], got {value}")


def check_guidance_rescale(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`guidance_rescale` must be in [0, 1], got {value}")


def rescale_guidance(guided: torch.Tensor, conditional: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. (2024, section 3.4): scale the guided prediction back to the per-image standard deviation of
    the fully conditioned one, mixed `phi` : 1 - phi with the plain guided prediction: Lin et al.'s answer to the
    over-exposure large guidance gives zero-terminal-SNR v models (on the committed editors it does not help,
    BENCHMARKS.md "On the committed base"). phi = 0 is plain classifier-free guidance."""
    if phi == 0.0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1.0 - phi) * guided


@torch.no_grad()
def edit_images(editor: InstructEditor, images: np.ndarray, instructions: Sequence[str], seeds: Sequence[int],
                steps: int | None = None, text_guidance: float | None = None, image_guidance: float | None = None,
                on_step: Callable[[int, int], None] | None = None, start: str | None = None,
                guidance_rescale: float | None = None) -> np.ndarray:
    """Edit uint8 images (N,H,W,3) by their instructions; one seed per image. Returns uint8 N,H,W,3.
    `start`: "noise" or "input" (module docstring); the editor's default_start when None. `guidance_rescale`:
    `rescale_guidance`'s phi; the editor's default_guidance_rescale when None."""
    steps = int(steps or editor.setting("default_steps"))
    s_t = float(editor.setting("default_guidance") if text_guidance is None else text_guidance)
    s_i = float(editor.setting("default_image_guidance") if image_guidance is None else image_guidance)
    check_guidance(s_t, s_i)
    start = str(editor.setting("default_start") if start is None else start)
    check_start(start)
    phi = float(editor.setting("default_guidance_rescale") if guidance_rescale is None else guidance_rescale)
    check_guidance_rescale(phi)
    n = len(images)
    if not (n == len(instructions) == len(seeds)):
        raise ValueError(f"{n} images, {len(instructions)} instructions and {len(seeds)} seeds: need one each")
    dev = editor.device
    scheduler = editor.scheduler.__class__.from_config(editor.scheduler.config)
    scheduler.set_timesteps(steps, device=dev)
    image_latents = editor.encode_images(images)
    text = editor.encode_text(list(instructions))
    empty = editor.encode_text([""])
    noise = [torch.randn(image_latents.shape[1:], generator=g) for g in per_image_generators(seeds)]
    latents = initial_latents(scheduler, image_latents, torch.stack(noise).to(dev), start)
    # rows: [image + text | image, no text | no image, no text]
    rows = torch.arange(n, device=dev).repeat(3)
    sees = torch.tensor([True] * (2 * n) + [False] * n, device=dev)
    conds = torch.cat([text, empty.expand(2 * n, -1, -1)])
    if editor.arch == "causal":
        editor.encode_input_branch(image_latents, empty)
    try:
        for i, t in enumerate(scheduler.timesteps):
            x = scheduler.scale_model_input(latents, t).repeat(3, 1, 1, 1)
            eps = editor.eps(x, t.expand(3 * n), conds, image_latents, sees, rows)
            e_full, e_img, e_none = eps.chunk(3)
            guided = rescale_guidance(e_none + s_i * (e_img - e_none) + s_t * (e_full - e_img), e_full, phi)
            latents = scheduler.step(guided, t, latents).prev_sample
            if on_step is not None:
                on_step(i + 1, steps)
    finally:
        if editor.branches is not None:
            editor.branches.clear()
    return to_uint8(editor.decode(latents))
