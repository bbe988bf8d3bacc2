"""Instruction editing core (SeedEdit's causal editor, or the concat baseline) for Editor.Edit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from editloop.models.instruct import load_instruct_editor
from editloop.models.instruct_sampling import MAX_GUIDANCE, STARTS, edit_images
from editloop.models.model_dir import model_version
from editloop.quote import quoted
from editloop.world.instructions import check_instruction
from services.core.batching import split_per_job
from services.core.errors import InvalidArgument
from services.core.sampling import ModelDefaults, Sampling, resolve_sampling


@dataclass(frozen=True)
class EditJob:
    image: np.ndarray  # HxWx3 uint8
    instruction: str
    num_images: int
    sampling: Sampling
    image_guidance: float
    start: str

    @property
    def batch_key(self) -> tuple:
        return (*self.sampling.batch_key, self.image_guidance, self.start, self.image.shape)


class InstructCore:
    def __init__(self, model_path: Path, device: str | None = None, name: str = "default-instruct",
                 version: str | None = None) -> None:
        self.path = Path(model_path)
        self.editor = load_instruct_editor(self.path, device=device)
        self.name = name
        self.version = version or model_version(self.path)
        self.defaults = ModelDefaults(int(self.editor.setting("default_steps")),
                                      float(self.editor.setting("default_guidance")), "ddim")
        self.image_guidance = float(self.editor.setting("default_image_guidance"))
        self.start = str(self.editor.setting("default_start"))
        self.native = self.editor.native_size

    def check_image(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if (h, w) != (self.native, self.native):
            raise InvalidArgument(f"`image` must be {self.native}x{self.native} for this editor, got {w}x{h}")

    def resolve(self, steps: int, guidance: float, seed: int, scheduler: str, image_guidance: float) -> tuple:
        """(Sampling, image guidance) with defaults filled in; both scales must lie in [0, MAX_GUIDANCE]."""
        if scheduler and scheduler != "ddim":
            raise InvalidArgument(f"`params.scheduler` must be 'ddim' (or empty) for instruction editing, "
                                  f"got {quoted(scheduler)}")
        s = resolve_sampling(steps, guidance, seed, "ddim", self.defaults)
        if s.guidance > MAX_GUIDANCE:
            raise InvalidArgument(f"`params.guidance` must be in (0, {MAX_GUIDANCE}] for instruction editing, "
                                  f"got {s.guidance}")
        ig = image_guidance or self.image_guidance
        if not 0 < ig <= MAX_GUIDANCE or ig != ig:
            raise InvalidArgument(f"`image_guidance` must be in (0, {MAX_GUIDANCE}] (0 = the model's default "
                                  f"{self.image_guidance}), got {image_guidance}")
        return s, float(ig)

    def resolve_start(self, start: str) -> str:
        """The request's start, or the editor's default when empty."""
        if not start:
            return self.start
        if start not in STARTS:
            raise InvalidArgument(f"`start` must be one of {list(STARTS)} (or empty: the editor's default "
                                  f"{self.start!r}), got {quoted(start)}")
        return start

    @staticmethod
    def instruction(text: str) -> str:
        try:
            return check_instruction(text)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    def run(self, jobs: list[EditJob], on_step: Callable[[int, int], None]) -> list[list[np.ndarray]]:
        s = jobs[0].sampling
        images = np.stack([j.image for j in jobs for _ in range(j.num_images)])
        instructions = [j.instruction for j in jobs for _ in range(j.num_images)]
        seeds = [j.sampling.seed + i for j in jobs for i in range(j.num_images)]  # image i of a job: seed + i
        out = edit_images(self.editor, images, instructions, seeds, s.steps, s.guidance, jobs[0].image_guidance,
                          on_step, start=jobs[0].start)
        return split_per_job(list(out), [j.num_images for j in jobs])
