"""Mask-based editing core (inpaint, outpaint, erase) over a diffusers inpainting pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editloop.models.model_dir import model_version
from editloop.models.pipeline_io import inpaint_inputs, pipeline_to_uint8
from editloop.models.zoo import load_pipeline, native_size, set_scheduler
from services.core.batching import split_per_job
from services.core.errors import InvalidArgument
from services.core.sampling import ModelDefaults, Sampling, TokenCounter
from services.generator.core import generators, step_callback


@dataclass(frozen=True)
class InpaintJob:
    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW {0, 1}; 1 = regenerate
    prompt: str
    num_images: int
    sampling: Sampling


class EditorCore:
    def __init__(self, model_path: Path, device: str | None = None, name: str = "base-inpaint") -> None:
        self.path = Path(model_path)
        self.pipe = load_pipeline(self.path, "inpaint", device=device)
        self.tokens = TokenCounter(self.pipe.tokenizer)  # prompt checks on request threads
        self.name = name
        self.version = model_version(self.path)
        self.defaults = ModelDefaults.from_dir(self.path)
        self.native = native_size(self.pipe)

    def check_image(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if (h, w) != (self.native, self.native) and self.native <= 128:
            raise InvalidArgument(f"`image` must be {self.native}x{self.native} for this model, got {w}x{h}")

    def check_mask(self, mask: np.ndarray, field: str = "mask") -> None:
        covered = int(mask.sum())
        if covered == 0:
            raise InvalidArgument(f"`{field}` covers nothing; set the pixels to regenerate to 255")
        if covered == mask.size:
            raise InvalidArgument(f"`{field}` covers the whole image; use Generator.Generate instead")

    def run(self, jobs: list[InpaintJob], on_step: Callable[[int, int], None]) -> list[list[np.ndarray]]:
        s = jobs[0].sampling
        set_scheduler(self.pipe, s.scheduler)
        images = np.stack([j.image for j in jobs for _ in range(j.num_images)])
        masks = np.stack([j.mask for j in jobs for _ in range(j.num_images)])
        image_t, mask_t = inpaint_inputs(images, masks)
        h, w = images.shape[1:3]
        with torch.inference_mode():
            out = self.pipe([j.prompt for j in jobs for _ in range(j.num_images)], image=image_t,
                            mask_image=mask_t, height=h, width=w, num_inference_steps=s.steps,
                            guidance_scale=s.guidance, generator=generators(jobs), output_type="np",
                            callback_on_step_end=step_callback(on_step, s.steps)).images
        return split_per_job(list(pipeline_to_uint8(out)), [j.num_images for j in jobs])
