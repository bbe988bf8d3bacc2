"""Feedback-learning examples drawn from the Shapes World: inpaint, erase and outpaint tasks.

Each example is a source image, a mask (1 = regenerate), the prompt the model is given, the scene
the result should show (for the judge, at evaluation time only) and the region the reference
regulariser compares with the source. For inpaint and outpaint the source is the ground truth of
the masked region (as in ByteEdit, which masks real images), so the whole image is compared; for
erase the masked object must go, so only the unmasked region is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from editloop.world.edits import Edit, edit_success, make_edit
from editloop.world.judge import JudgedScene, judge
from editloop.world.masks import OUTPAINT_LAYOUTS, cell_mask, outpaint_mask
from editloop.world.metrics import compare
from editloop.world.render import render
from editloop.world.scene import Scene, sample_scene

TASKS = ("inpaint", "erase", "outpaint")


@dataclass(frozen=True)
class FeedbackExample:
    task: str
    source: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW uint8, 1 = regenerate
    prompt: str
    target: Scene
    reference: np.ndarray  # HxW uint8, 1 = pixels the regulariser compares with the source
    edit: Edit | None = None


def check_tasks(tasks: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"`tasks` must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")
    return tuple(tasks)


def make_example(rng: np.random.Generator, task: str) -> FeedbackExample:
    """One example of `task` on a freshly sampled scene."""
    if task == "erase":
        scene = sample_scene(rng, int(rng.integers(2, 4)))
        edit = make_edit(scene, "remove", rng)
        return FeedbackExample(task, render(scene), edit.mask, edit.target.caption, edit.target,
                               (1 - edit.mask).astype(np.uint8), edit)
    scene = sample_scene(rng)
    if task == "inpaint":
        mask = cell_mask(scene.objects[int(rng.integers(len(scene.objects)))].position)
    elif task == "outpaint":
        mask = outpaint_mask(OUTPAINT_LAYOUTS[int(rng.integers(len(OUTPAINT_LAYOUTS)))])
    else:
        raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}")
    return FeedbackExample(task, render(scene), mask, scene.caption, scene, np.ones_like(mask))


def upscale(example: FeedbackExample, size: int) -> FeedbackExample:
    """The example at `size` px (nearest neighbour; for models that work at a larger resolution, e.g. 512)."""
    factor = size // example.source.shape[0]
    if factor * example.source.shape[0] != size or factor < 1:
        raise ValueError(f"`resolution` must be a multiple of {example.source.shape[0]}, got {size}")
    if factor == 1:
        return example

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)

    return FeedbackExample(example.task, up(example.source), up(example.mask), example.prompt, example.target,
                           up(example.reference), example.edit)


def feedback_examples(n: int, seed: int, tasks: tuple[str, ...] = TASKS) -> list[FeedbackExample]:
    """`n` examples cycling through `tasks` (deterministic in `seed`)."""
    tasks = check_tasks(tasks)
    rng = np.random.default_rng(seed)
    return [make_example(rng, tasks[i % len(tasks)]) for i in range(n)]


def succeeded(judged: JudgedScene, example: FeedbackExample) -> bool:
    """The world judge's verdict: erase removed the object; inpaint restored the scene; outpaint kept the
    background."""
    if example.task == "erase":
        assert example.edit is not None
        return edit_success(judged, example.edit)
    if example.task == "outpaint":
        return judged.background == example.target.background
    return compare(judged, example.target).all_correct


def success_rate(images: np.ndarray, examples: list[FeedbackExample]) -> float:
    return float(np.mean([succeeded(judge(img), ex) for img, ex in zip(images, examples)]))
