"""How much can a label on the base editor's own candidate sets say, and does varying the sampling within a set help?

    .venv/bin/python bench/experiments/label_signal.py --out bench/results/label_signal.json   # ~5 minutes here

The loop's first reward on the base editor's own edits sat at chance (BENCHMARKS.md, "A turn of the loop with nobody
typing"): its sets' four edits are near-twins. For --sets world edit examples (inpaint, erase, outpaint in turn,
seeds 500000+ as the loop's label batches), the committed base inpainting model makes a set of four edits two ways:
"same" (the loop's batches: one guidance 4.0, four seeds) and "varied" (four seeds, each edit its own guidance from
--guidances). For each set and each taste, the panel's own utility (WORLD.md) of every edit gives: its spread (max -
min), and the annotators' ceiling: the probability that a panel annotator's best has a higher utility than their
worst, with best and worst drawn as the simulated annotators draw them (Plackett-Luce at temperatures 0.25 / 0.5 /
1.0), averaged over the panel and the sets. A reward can learn from labels only as far as that ceiling is above 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import permutations
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from editloop.guidances import by_guidance  # noqa: E402
from editloop.models.base import base_model_dir  # noqa: E402
from editloop.models.pipeline_io import inpaint_inputs, per_image_generators, pipeline_to_uint8  # noqa: E402
from editloop.models.zoo import load_pipeline, set_scheduler  # noqa: E402
from editloop.world.annotators import DEFAULT_WEIGHTS, reversed_weights, utility  # noqa: E402
from editloop.world.scene import parse_caption  # noqa: E402
from trainers.edit_sets import LABEL_SEED  # noqa: E402
from trainers.feedback.examples import feedback_examples  # noqa: E402

TASTES = {"default": DEFAULT_WEIGHTS, "reversed": reversed_weights()}
TEMPERATURES = (0.25, 0.5, 1.0)


def edits(pipe, example, guidances: list[float], seed: int, steps: int) -> list[np.ndarray]:
    """Four edits of `example`, image i at guidances[i] with seed + i (one pipeline call per distinct guidance)."""

    def make(g: float, idx: list[int]) -> np.ndarray:
        image, mask = inpaint_inputs(np.stack([example.source] * len(idx)), np.stack([example.mask] * len(idx)))
        with torch.inference_mode():
            return pipeline_to_uint8(pipe([example.prompt] * len(idx), image=image, mask_image=mask,
                                          num_inference_steps=steps, guidance_scale=g, output_type="np",
                                          generator=per_image_generators(seed + i for i in idx), height=64,
                                          width=64).images)

    return by_guidance(guidances, make)


def ceiling(u: np.ndarray, temperature: float) -> float:
    """P(u[best] > u[worst]) (ties half) under Plackett-Luce best ~ softmax(u/T), worst ~ softmax(-u/T) of the rest."""
    total = 0.0
    p_best = np.exp((u - u.max()) / temperature)
    p_best /= p_best.sum()
    for b, w in permutations(range(len(u)), 2):
        rest = np.array([i for i in range(len(u)) if i != b])
        p_worst = np.exp(-(u[rest] - u[rest].min()) / temperature)
        p_worst /= p_worst.sum()
        pw = p_worst[list(rest).index(w)]
        total += p_best[b] * pw * (1.0 if u[b] > u[w] else 0.5 if u[b] == u[w] else 0.0)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/label_signal.json")
    p.add_argument("--sets", type=int, default=48)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidances", default="1.0,2.5,4.0,7.0")
    args = p.parse_args()
    torch.manual_seed(0)
    pipe = load_pipeline(base_model_dir("inpaint"), "inpaint", device="cpu", dtype="fp32")
    set_scheduler(pipe, "ddim")
    ways = {"same": [4.0] * 4, "varied": [float(g) for g in args.guidances.split(",")]}
    report: dict = {"args": vars(args) | {"out": str(args.out)}, "base": "committed base inpainting model", "ways": {}}
    for way, guidances in ways.items():
        utilities = {taste: [] for taste in TASTES}
        for i, example in enumerate(feedback_examples(args.sets, LABEL_SEED)):
            images = edits(pipe, example, guidances, LABEL_SEED + 1000 * i, args.steps)
            intended = parse_caption(example.prompt)
            for taste, weights in TASTES.items():
                utilities[taste].append(np.array([utility(im, intended, weights) for im in images]))
        report["ways"][way] = {"guidances": guidances, **{taste: {
            "spread_median": float(np.median([u.max() - u.min() for u in us])),
            "spread_over_0_5": float(np.mean([u.max() - u.min() > 0.5 for u in us])),
            "ceiling": float(np.mean([ceiling(u, t) for u in us for t in TEMPERATURES]))} for taste, us in
            utilities.items()}}
        print(way, json.dumps(report["ways"][way]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
