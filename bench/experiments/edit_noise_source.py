"""Where does an instruction editor take the background colour from: the input image or the noise?

    .venv/bin/python bench/edit_noise_source.py [--editor editloop/weights/instruct]   # ~1 CPU-minute

Held-out single-object scenes, an instruction that leaves the background alone (make the object
large), and the same seed for every image of a row. An editor that carries the input's background
keeps it whatever the seed; one that reads it from the initial noise (a noise schedule whose last
step still shows low frequencies: bench/noise_leak.py) gives one background per seed. Writes
bench/results/edit_noise_source.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from editloop.models.instruct import load_instruct_editor
from editloop.models.instruct_sampling import edit_images
from editloop.world import judge, render, sample_scene

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--editor", type=Path, default=Path("editloop/weights/instruct"))
    parser.add_argument("--n", type=int, default=12, help="scenes (held-out seed 880000)")
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    editor = load_instruct_editor(args.editor)
    rng = np.random.default_rng(880_000)
    scenes = [sample_scene(rng, 1) for _ in range(args.n)]
    images = np.stack([render(s) for s in scenes])
    instructions = [f"make the {s.objects[0].color} {s.objects[0].shape} large" for s in scenes]
    kept, distinct_per_seed, rows = [], [], []
    for seed in range(args.seeds):
        out = edit_images(editor, images, instructions, [seed] * args.n)
        backgrounds = [judge(o).background for o in out]
        kept.extend(b == s.background for b, s in zip(backgrounds, scenes))
        distinct_per_seed.append(len(set(backgrounds)))
        rows.append(backgrounds)
        print(f"seed {seed}: {backgrounds}", flush=True)
    report = {
        "editor": str(args.editor), "n": args.n, "seeds": args.seeds,
        "input_backgrounds": [s.background for s in scenes],
        "distinct_input_backgrounds": len({s.background for s in scenes}),
        "output_backgrounds_per_seed": rows,
        "background_kept": float(np.mean(kept)),
        "mean_distinct_output_backgrounds_per_seed": float(np.mean(distinct_per_seed)),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edit_noise_source.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "output_backgrounds_per_seed"}, indent=2))


if __name__ == "__main__":
    main()
