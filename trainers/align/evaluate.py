"""Held-out evaluation of an instruction editor by the world judge, per edit kind.

Sources are the world's clean renders of held-out scenes (the judge reads them exactly); the editor's
output for each instruction is judged: success (the edited attributes are right), preservation (every
other attribute unchanged, no extra objects) and the mean L1 to the source outside the edit region.
"""

from __future__ import annotations

import time

import numpy as np

from editloop.models.instruct import InstructEditor
from editloop.models.instruct_sampling import edit_images
from editloop.world.edits import EDIT_KINDS, Edit, edit_preservation, edit_success
from editloop.world.judge import judge
from editloop.world.render import render
from trainers.align.filters import region_l1
from trainers.align.pairs import edit_specs

HELD_OUT_SEED = 770_000  # training specs draw from small seeds per round; evaluation from here


def held_out_edits(per_kind: int, seed: int = HELD_OUT_SEED) -> list[Edit]:
    return edit_specs(per_kind * len(EDIT_KINDS), seed)


def judge_edits(edits: list[Edit], sources: np.ndarray, outputs: np.ndarray) -> dict:
    """Success, preservation and L1 outside the edit region: overall, per kind and per edit (in order, so a run
    on more held-out edits can be compared on the edits of a smaller one: `held_out_edits` grows by prefix)."""
    judged = [judge(o) for o in outputs]
    ok = np.array([edit_success(j, e) for j, e in zip(judged, edits)], dtype=float)
    kept = np.array([edit_preservation(j, e) for j, e in zip(judged, edits)], dtype=float)
    _, outside = region_l1(sources, outputs, np.stack([e.mask for e in edits]))
    kinds = np.array([e.kind for e in edits])

    def summary(sel: np.ndarray) -> dict[str, float]:
        out = outside[sel]
        return {"success": float(ok[sel].mean()), "preservation": float(kept[sel].mean()),
                "l1_outside": float(np.nanmean(out)) if np.isfinite(out).any() else float("nan"),
                "n": int(sel.sum())}

    everything = np.ones(len(edits), dtype=bool)
    return {**summary(everything), "per_kind": {k: summary(kinds == k) for k in EDIT_KINDS if (kinds == k).any()},
            "per_edit": {"success": ok.astype(int).tolist(), "preservation": kept.astype(int).tolist()}}


def evaluate_editor(editor: InstructEditor, edits: list[Edit], seed: int = HELD_OUT_SEED, batch: int = 32,
                    **sampling: float | str) -> tuple[dict, np.ndarray]:
    """Edit the clean renders of `edits` with their instructions; returns (metrics, outputs)."""
    t0 = time.perf_counter()
    sources = np.stack([render(e.source) for e in edits])
    outs = [edit_images(editor, sources[i : i + batch], [e.instruction for e in edits[i : i + batch]],
                        [seed + k for k in range(i, min(i + batch, len(edits)))], **sampling)
            for i in range(0, len(edits), batch)]
    outputs = np.concatenate(outs)
    metrics = judge_edits(edits, sources, outputs)
    metrics["seconds"] = time.perf_counter() - t0
    return metrics, outputs
