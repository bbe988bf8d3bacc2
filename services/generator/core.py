"""Text-to-image core: a diffusers pipeline behind a batch interface (no gRPC here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editloop.models.model_dir import model_version
from editloop.models.pipeline_io import per_image_generators, pipeline_to_uint8
from editloop.models.zoo import load_pipeline, set_scheduler
from services.core.batching import split_per_job
from services.core.sampling import ModelDefaults, Sampling, TokenCounter


@dataclass(frozen=True)
class GenerateJob:
    prompt: str
    num_images: int
    sampling: Sampling


def step_callback(on_step: Callable[[int, int], None], total: int):
    def callback(pipe, step: int, timestep, kwargs):
        on_step(step + 1, total)  # raises Cancelled when every client of the batch has gone
        return kwargs

    return callback


def generators(jobs: list) -> list[torch.Generator]:
    """Image i of a job uses seed + i, whatever else shares its batch."""
    return per_image_generators(job.sampling.seed + i for job in jobs for i in range(job.num_images))


class GeneratorCore:
    def __init__(self, model_path: Path, device: str | None = None, name: str = "base-t2i") -> None:
        self.path = Path(model_path)
        self.pipe = load_pipeline(self.path, "t2i", device=device)
        self.tokens = TokenCounter(self.pipe.tokenizer)  # prompt checks on request threads
        self.name = name
        self.version = model_version(self.path)
        self.defaults = ModelDefaults.from_dir(self.path)

    def run(self, jobs: list[GenerateJob], on_step: Callable[[int, int], None]) -> list[list[np.ndarray]]:
        """Run compatible jobs (same steps, guidance, scheduler) as one batch."""
        s = jobs[0].sampling
        set_scheduler(self.pipe, s.scheduler)
        prompts = [j.prompt for j in jobs for _ in range(j.num_images)]
        with torch.inference_mode():
            out = self.pipe(prompts, num_inference_steps=s.steps, guidance_scale=s.guidance,
                            generator=generators(jobs), output_type="np",
                            callback_on_step_end=step_callback(on_step, s.steps)).images
        return split_per_job(list(pipeline_to_uint8(out)), [j.num_images for j in jobs])
