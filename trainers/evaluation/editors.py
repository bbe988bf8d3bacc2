"""An editor on a suite: the inpainting editor (source, mask, prompt) or the instruction editor (source,
instruction), sampled with fixed seeds, then measured item by item.

Every suite: L1 / PSNR / SSIM outside the mask against the source (image_metrics.py), and against the suite's
reference result where it has one; the promoted reward models' scores where the registry has them (sigmoid of a
preference reward, the coherence reward's real-probability); CLIP-I / CLIP-T / CLIP-direction with CLIP weights.
World suites: the world judge's success and preservation, per item and per task (edit kind)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from editloop.models.pipeline_io import pipeline_to_uint8
from editloop.world.judge import judge
from editloop.world.masks import cell_mask
from editloop.world.metrics import compare
from trainers.evaluation.image_metrics import outside_metrics
from trainers.evaluation.suites import Suite, SuiteItem

EVAL_SEED = 123_000  # the sampler's seeds: item i gets EVAL_SEED + i


@dataclass
class EditorRun:
    outputs: np.ndarray  # N,H,W,3 uint8
    seconds: float
    steps: int


def sample_inpaint(pipe, suite: Suite, steps: int, guidance: float, seed: int = EVAL_SEED, batch: int = 32
                   ) -> EditorRun:
    """The inpainting editor on every item (each needs a mask): item i's generator is seeded `seed` + i."""
    import torch

    from editloop.models.pipeline_io import inpaint_inputs

    no_mask = [it.id for it in suite.items if it.mask is None]
    if no_mask:
        raise ValueError(f"the inpainting editor needs a mask per item; {len(no_mask)} items of the suite have "
                         f"none (first: {no_mask[0]!r}); evaluate the instruction editor on it instead")
    t0, outs = time.perf_counter(), []
    size = suite.items[0].source.shape[0]
    for i in range(0, len(suite.items), batch):
        part = suite.items[i:i + batch]
        image, mask = inpaint_inputs(np.stack([it.source for it in part]), np.stack([it.mask for it in part]))
        gens = [torch.Generator("cpu").manual_seed(seed + i + k) for k in range(len(part))]
        res = pipe([it.prompt for it in part], image=image, mask_image=mask, num_inference_steps=steps,
                   guidance_scale=guidance, generator=gens, output_type="np", height=size, width=size)
        outs.append(pipeline_to_uint8(res.images))
    return EditorRun(np.concatenate(outs), time.perf_counter() - t0, steps)


def sample_instruct(editor, suite: Suite, seed: int = EVAL_SEED, batch: int = 32) -> EditorRun:
    """The instruction editor on every item with its default sampling; item i's seed is `seed` + i."""
    from editloop.models.instruct_sampling import edit_images

    t0, outs = time.perf_counter(), []
    for i in range(0, len(suite.items), batch):
        part = suite.items[i:i + batch]
        outs.append(edit_images(editor, np.stack([it.source for it in part]), [it.instruction for it in part],
                                [seed + i + k for k in range(len(part))]))
    return EditorRun(np.concatenate(outs), time.perf_counter() - t0, int(editor.setting("default_steps")))


def kept_objects_intact(judged, example) -> bool:
    """Inpaint / outpaint preservation: no extra object, and every target object whose cell the mask does not touch
    judged present with all its attributes (erase: editloop.world.edits.edit_preservation)."""
    from editloop.world.edits import edit_preservation

    if example.edit is not None:
        return edit_preservation(judged, example.edit)
    cmp = compare(judged, example.target)
    kept = [k for k, o in enumerate(example.target.objects) if not (cell_mask(o.position) & example.mask).any()]
    return cmp.no_extra and all(all(cmp.objects[k].values()) for k in kept)


def world_verdicts(suite: Suite, outputs: np.ndarray) -> dict[str, list[int]]:
    """The world judge's success and preservation per item (world suites only)."""
    from editloop.world.edits import edit_preservation, edit_success
    from trainers.feedback.examples import FeedbackExample, succeeded

    ok, kept = [], []
    for out, ref in zip(outputs, suite.judged, strict=True):
        judged = judge(out)
        if isinstance(ref, FeedbackExample):
            ok.append(int(succeeded(judged, ref)))
            kept.append(int(kept_objects_intact(judged, ref)))
        else:
            ok.append(int(edit_success(judged, ref)))
            kept.append(int(edit_preservation(judged, ref)))
    return {"success": ok, "preservation": kept}


def pixel_metrics(items: list[SuiteItem], outputs: np.ndarray) -> dict[str, list[float]]:
    """Per item: L1 / PSNR / SSIM outside the mask against the source; against the reference where there is one
    (NaN where not)."""
    rows = []
    for item, image in zip(items, outputs, strict=True):
        row = outside_metrics(image, item.source, item.mask)
        if item.target is not None:
            ref = outside_metrics(image, item.target, None)
            row |= {"l1_target": ref["l1_outside"], "psnr_target": ref["psnr_outside"],
                    "ssim_target": ref["ssim_outside"]}
        rows.append(row)
    keys = dict.fromkeys(k for row in rows for k in row)
    return {k: [row.get(k, float("nan")) for row in rows] for k in keys}


def reward_metrics(rewards, items: list[SuiteItem], outputs: np.ndarray) -> dict[str, list[float]]:
    """Per item, each loaded reward's score of the output for the item's prompt (and source and mask)."""
    from trainers.feedback.evaluate import coherence_scores, image_rewards

    out = {f"reward_{k}": v.astype(float).tolist() for k, v in image_rewards(rewards, outputs, items).items()}
    if rewards.coherence is not None:
        out["reward_coherence"] = coherence_scores(rewards, outputs).astype(float).tolist()
    return out


def summarise(per_item: dict[str, list], tasks: list[str]) -> dict:
    """The mean of every per-item metric (ignoring NaN), overall and per task."""
    names = np.array(tasks)

    def means(sel: np.ndarray) -> dict[str, float]:
        out = {}
        for key, values in per_item.items():
            v = np.asarray(values, dtype=float)[sel]
            if np.isfinite(v).any():
                out[key] = float(np.nanmean(v))
        return out | {"n": int(sel.sum())}

    everything = np.ones(len(tasks), dtype=bool)
    per_task = {t: means(names == t) for t in sorted(set(tasks)) if t} if any(tasks) else {}
    return {**means(everything), "per_task": per_task}


def measure(suite: Suite, run: EditorRun, rewards=None, clip_dir: Path | None = None) -> dict:
    """Every metric the suite allows, per item and summarised."""
    per_item: dict[str, list] = {}
    if suite.judged:
        per_item |= world_verdicts(suite, run.outputs)
    per_item |= pixel_metrics(suite.items, run.outputs)
    if rewards is not None and (rewards.preference or rewards.coherence is not None):
        per_item |= reward_metrics(rewards, suite.items, run.outputs)
    if clip_dir is not None:
        from trainers.evaluation.clip_metrics import clip_metrics

        per_item |= clip_metrics(clip_dir, suite.items, run.outputs)
    summary = summarise(per_item, [it.task for it in suite.items])
    summary["seconds_per_image"] = run.seconds / len(suite.items)
    return {"metrics": summary, "per_item": {"id": [it.id for it in suite.items], **per_item}}
