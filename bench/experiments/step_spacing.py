"""Where a few-step sampler puts its timesteps: "leading" vs "trailing" spacing on the base inpainting model.

    .venv/bin/python bench/step_spacing.py          # ~5 CPU-minutes

Stable Diffusion's DDIM config spaces inference timesteps "leading" with steps_offset 1: at 20 steps
the first one is t = 951, at 8 steps t = 876, yet sampling starts from pure Gaussian noise, which
matches t = 999 (abar_999 = 0.0047 on this schedule) far better than t = 876 (abar_876 = 0.018). Lin et
al. (2024, "Common diffusion noise schedules and sample steps are flawed", section 3.3) name this flaw
and fix it with "trailing" spacing, whose first step is t = 999 at any step count. Fewer steps widen the
gap, so the 8-step model of progressive acceleration is where it should matter. The model's weights are
the same in every row; only the timesteps differ. (This measurement is why the committed base models now
sample with trailing timesteps; the bench sets each spacing itself, so it reads the same either way.)

On the held-out feedback examples (inpaint, erase, outpaint; bench/feedback_quality.py's fresh set): the
default-taste panel's mean utility (also per task), the world judge's success and GSB against the 20-step
leading sampler. Writes bench/results/step_spacing.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from editloop.models.base import base_model_dir
from editloop.models.zoo import load_pipeline, set_timestep_spacing
from editloop.world.annotators import DEFAULT_WEIGHTS, panel
from trainers.feedback.evaluate import panel_gsb, sample, utilities, utility_by_task
from trainers.feedback.examples import feedback_examples, success_rate
from trainers.feedback.pefl import ddim

SPACINGS = ("leading", "trailing")


def first_timesteps(pipe, steps: int) -> list[int]:
    return [int(t) for t in ddim(pipe, steps).timesteps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="inpainting model directory (default: the base)")
    parser.add_argument("--eval", type=int, default=144, help="held-out examples (a third each task)")
    parser.add_argument("--seed", type=int, default=950_000)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 20])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "results" / "step_spacing.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = args.model or base_model_dir("inpaint")
    examples = feedback_examples(args.eval, args.seed)
    tasks = [e.task for e in examples]
    rows, reference = [], None
    for spacing in SPACINGS:
        pipe = set_timestep_spacing(load_pipeline(model, "inpaint", device="cpu", dtype="fp32"), spacing)
        for steps in sorted(args.steps, reverse=True):
            t0 = time.perf_counter()
            images = sample(pipe, examples, args.seed, steps).images
            seconds = time.perf_counter() - t0
            u = utilities(images, examples, DEFAULT_WEIGHTS)
            reference = u if reference is None else reference  # the 20-step leading sampler: the baseline
            gsb = panel_gsb(u, reference, panel(weights=DEFAULT_WEIGHTS, seed=7))  # a fresh panel per row
            row = {"spacing": spacing, "steps": steps, "timesteps": first_timesteps(pipe, steps),
                   "mean_utility": float(u.mean()),
                   "utility_by_task": utility_by_task(u, tasks),
                   "success": success_rate(images, examples), "gsb_vs_first_row": [gsb.good, gsb.same, gsb.bad],
                   "ms_per_image": 1000 * seconds / len(examples)}
            rows.append(row)
            print(f"{spacing:8s} {steps:2d} steps (t = {row['timesteps'][:2]}...): utility {row['mean_utility']:.3f} "
                  f"({', '.join(f'{t} {v:.3f}' for t, v in row['utility_by_task'].items())}), success "
                  f"{row['success']:.3f}, GSB vs first row {row['gsb_vs_first_row']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "bench/step_spacing.py " + " ".join(sys.argv[1:]),
                                    "model": str(model), "examples": args.eval, "seed": args.seed, "rows": rows},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
