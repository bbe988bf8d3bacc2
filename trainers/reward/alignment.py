"""Alignment reward R_b: does the image match the text? Positive caption vs hard negatives.

Images are the world's quality mix (the weak generator's data) with their true captions; a hard
negative changes exactly one attribute (a recolor, reshape, resize, move or background edit of
the world), so the model must read every attribute. Held-out accuracy is reported per attribute.

The same on edit instructions (`instruction_examples`): the edited image, scored with its source
image as the model's source input, against the true instruction vs another instruction of the same
kind on the same scene (another colour, shape, size, place or background); reported as
"edit:<attribute>".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from editloop.models.data import edit_context, to_tensor
from editloop.models.reward import PreferenceReward
from editloop.world import make_edit, render, sample_scene
from editloop.world.render import sample_quality
from trainers.reward.aesthetic import score
from trainers.reward.loop import LoopConfig, LoopResult, shuffled_batches, train_loop

NEGATIVE_KINDS = {"recolor": "color", "reshape": "shape", "resize": "size", "move": "position",
                  "background": "background"}


@dataclass(frozen=True)
class AlignmentExample:
    image: np.ndarray
    caption: str  # the caption, or the edit instruction when `source` is set
    negative: str
    attribute: str
    source: np.ndarray | None = None  # the image before the edit (instruction examples)


def alignment_examples(n: int, seed: int) -> list[AlignmentExample]:
    rng = np.random.default_rng(seed)
    kinds = list(NEGATIVE_KINDS)
    out = []
    while len(out) < n:
        scene = sample_scene(rng)
        kind = kinds[len(out) % len(kinds)]
        try:
            negative = make_edit(scene, kind, rng).target
        except ValueError:  # e.g. no free cell to move to
            continue
        image = render(scene, sample_quality(rng, len(scene.objects), q=float(rng.uniform(0, 1))))
        out.append(AlignmentExample(image, scene.caption, negative.caption, NEGATIVE_KINDS[kind]))
    return out


def instruction_examples(n: int, seed: int) -> list[AlignmentExample]:
    """Edited images with their source: the true instruction vs another of the same kind on the same scene."""
    rng = np.random.default_rng(seed)
    kinds = list(NEGATIVE_KINDS)
    out: list[AlignmentExample] = []
    while len(out) < n:
        scene = sample_scene(rng)
        kind = kinds[len(out) % len(kinds)]
        try:
            edit = make_edit(scene, kind, rng)
            other = next(o for o in (make_edit(scene, kind, rng) for _ in range(10))
                         if o.instruction != edit.instruction)
        except (ValueError, StopIteration):  # no second distinct edit of this kind here
            continue
        q = float(rng.uniform(0, 1))
        source = render(scene, sample_quality(rng, len(scene.objects), q=q))
        image = render(edit.target, sample_quality(rng, len(edit.target.objects), q=q))
        out.append(AlignmentExample(image, edit.instruction, other.instruction, f"edit:{NEGATIVE_KINDS[kind]}",
                                    source))
    return out


def mixed_examples(n: int, seed: int, instruction_fraction: float) -> list[AlignmentExample]:
    """Caption examples and a fraction of instruction examples, interleaved."""
    k = int(round(n * instruction_fraction))
    edits = instruction_examples(k, seed + 7_000_000) if k else []
    captions = alignment_examples(n - k, seed)
    return [e for pair in zip(captions, edits) for e in pair] + captions[len(edits):] + edits[len(captions):]


def _margin(model: PreferenceReward, tokenizer: PreTrainedTokenizerFast, batch: list[AlignmentExample]) -> torch.Tensor:
    images = to_tensor([e.image for e in batch])
    source, mask = edit_context([e.source for e in batch], [None] * len(batch), *images.shape[-2:])
    if source is not None:  # caption examples get the model's "no source" (zeros)
        source, mask = torch.cat([source, source]), torch.cat([mask, mask])
    scores = score(model, tokenizer, torch.cat([images, images]), [e.caption for e in batch] +
                   [e.negative for e in batch], source, mask)
    return scores[: len(batch)] - scores[len(batch):]


@torch.no_grad()
def accuracy_by_attribute(model: PreferenceReward, tokenizer: PreTrainedTokenizerFast,
                          examples: list[AlignmentExample], batch_size: int = 128) -> dict[str, float]:
    model.eval()
    hits: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        for e, m in zip(batch, _margin(model, tokenizer, batch).tolist()):
            hits[e.attribute].append(1.0 if m > 0 else 0.5 if m == 0 else 0.0)
    out = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
    out["all"] = float(np.mean([x for v in hits.values() for x in v]))
    return out


def train_alignment(model: PreferenceReward, tokenizer: PreTrainedTokenizerFast, train: list[AlignmentExample],
                    held_out: list[AlignmentExample], cfg: LoopConfig, run_dir: Path, batch_size: int = 64,
                    progress=None) -> tuple[PreferenceReward, LoopResult]:
    def loss_fn(m: PreferenceReward, batch: list[AlignmentExample]) -> torch.Tensor:
        return -F.logsigmoid(_margin(m, tokenizer, batch)).mean()

    return train_loop(model, shuffled_batches(train, batch_size, cfg.seed), loss_fn,
                      lambda m: accuracy_by_attribute(m, tokenizer, held_out)["all"], cfg, run_dir, progress)


# ---- the alignment kind's trainer (trainers/reward/kinds.py): generated world examples, no labels needed ----

def _data(sessions, store, settings, cfg) -> dict:
    fraction = cfg.alignment_instructions
    return {"train": mixed_examples(cfg.alignment_train, cfg.seed, fraction),
            "eval": mixed_examples(cfg.alignment_eval, 10_000 + cfg.seed, fraction),
            # chooses the best checkpoint, so the eval examples' score (the gate's, the floor's) is not chosen on
            "select": mixed_examples(max(cfg.alignment_eval // 2, 1), 20_000 + cfg.seed, fraction),
            "lineage": {"source": "world captions with one-attribute hard negatives, and edit instructions "
                                  "against another instruction of the same kind",
                        "train_examples": cfg.alignment_train, "instruction_fraction": fraction, "seed": cfg.seed}}


def _train(model, tokenizer, data: dict, cfg, run_dir: Path, progress) -> tuple[object, LoopResult]:
    return train_alignment(model, tokenizer, data["train"], data["select"], cfg.loop(), run_dir,
                           cfg.batch_size, progress)


def _evaluate(model, tokenizer, data: dict) -> tuple[float, dict[str, float]]:
    by_attr = accuracy_by_attribute(model, tokenizer, data["eval"])
    return by_attr["all"], {f"accuracy_{k}": v for k, v in by_attr.items()}


def _floor(score: float, data: dict, model) -> tuple[int, int, str]:
    units = len(data["eval"])
    return (int(round(score * units)) if score == score else 0), units, "held-out examples"


def _held_out(model, tokenizer, sessions, store, settings, n: int | None) -> tuple[str, dict]:
    from trainers.evaluation.rewards import ALIGNMENT_SEED, alignment_accuracy

    return f"world-alignment-{ALIGNMENT_SEED}", alignment_accuracy(model, tokenizer, n or 400)


def _register() -> None:
    from trainers.reward.kinds import KindTrainer, register_trainer

    register_trainer(KindTrainer("alignment", _data, _train, _evaluate, _floor, _held_out))


_register()
