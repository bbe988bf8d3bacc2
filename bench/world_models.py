"""Measured quality of the base models on held-out seeds (issue: Shapes World and tiny models).

    .venv/bin/python bench/world_models.py [--model-dir editloop/weights/base] [--n 100] [--parts t2i inpaint]
        [--name world_models]

Writes bench/results/<name>.json and bench/results/<name>_grid.png; the table in BENCHMARKS.md is
copied from the JSON. `--parts t2i` measures a run directory that has only a text-to-image model.
Held-out seeds start at 900_000 (training data uses
seeds derived from (seed, stage, step) with small seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from editloop.models.evaluate import edit_scores, generate, inpaint, score_captions, vae_gate_accuracy
from editloop.models.pipeline_io import pipeline_to_uint8
from editloop.models.zoo import load_pipeline
from editloop.world import judge, outpaint_mask, panel, render, sample_scene
from editloop.world.io import save_grid_png
from editloop.world.masks import OUTPAINT_LAYOUTS
from editloop.world.palette import POSITIONS

HELD_OUT = 900_000
RESULTS = Path(__file__).resolve().parent / "results"


def caption_accuracy(pipe, n: int, n_objects: list[int], seed: int, steps: int, guidance: float):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, int(rng.choice(n_objects))) for _ in range(n)]
    images = generate(pipe, [s.caption for s in scenes], seed, steps, guidance)
    return score_captions(images, scenes), images, scenes


def outpaint_background(pipe, n: int, seed: int, steps: int, guidance: float) -> float:
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    masks = np.stack([outpaint_mask(OUTPAINT_LAYOUTS[i % len(OUTPAINT_LAYOUTS)]) for i in range(n)])
    out = inpaint(pipe, np.stack([render(s) for s in scenes]), masks, [s.caption for s in scenes], seed,
                  steps, guidance)
    return float(np.mean([judge(o).background == s.background for o, s in zip(out, scenes)]))


def utility_spread(pipe, n_prompts: int, k: int, seed: int, steps: int, guidance: float) -> dict[str, float]:
    """Spread of the annotators' utility within candidate sets of k samples of one prompt."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n_prompts)]
    prompts = [s.caption for s in scenes for _ in range(k)]
    images = generate(pipe, prompts, seed, steps, guidance)
    annotator = panel()[0]
    stds, ranges = [], []
    for i, scene in enumerate(scenes):
        u = annotator.utilities(list(images[i * k : (i + 1) * k]), scene)
        stds.append(u.std())
        ranges.append(u.max() - u.min())
    return {"within_set_utility_std": float(np.mean(stds)), "within_set_utility_range": float(np.mean(ranges)),
            "annotator_temperature": annotator.temperature}


def layout_source(pipe, n_seeds: int, seed: int, steps: int, guidance: float) -> dict[str, float]:
    """Who decides where the object goes: the caption or the initial noise? For each seed, one shared
    initial latent and nine captions that differ only in the position; a model that reads the layout
    from the noise draws all nine at one place. (`seeds_with_one_place_for_all_nine` counts nine images
    without a single judged object as one place too, as its first measurements did; the `_objects` count
    takes only seeds whose nine images each show one object.)"""
    rng = np.random.default_rng(seed)
    follows, one_place, one_object_place = [], [], []
    for k in range(n_seeds):
        scene = sample_scene(rng, 1)
        prompts = [replace(scene, objects=(replace(scene.objects[0], position=p),)).caption for p in POSITIONS]
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed + k))
        out = pipe(prompts, latents=latents.repeat(len(prompts), 1, 1, 1), num_inference_steps=steps,
                   guidance_scale=guidance, output_type="np").images
        judged = [judge(img).objects for img in pipeline_to_uint8(out)]
        places = [objs[0].position if len(objs) == 1 else None for objs in judged]
        follows.extend(p == want for p, want in zip(places, POSITIONS))
        one_place.append(len(set(places)) == 1)
        one_object_place.append(len(set(places)) == 1 and places[0] is not None)
    return {"position_follows_caption": float(np.mean(follows)),
            "seeds_with_one_place_for_all_nine": float(np.mean(one_place)),
            "seeds_with_one_place_for_all_nine_objects": float(np.mean(one_object_place)), "seeds": n_seeds}


def samples_per_second(pipe, batch: int, steps: int) -> float:
    prompts = ["a large red circle at the center on a white background"] * batch
    generate(pipe, prompts[:2], 0, 2)
    start = time.perf_counter()
    generate(pipe, prompts, 0, steps, batch=batch)
    return batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("editloop/weights/base"))
    parser.add_argument("--n", type=int, default=100, help="held-out samples per metric")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--parts", nargs="+", choices=("t2i", "inpaint"), default=["t2i", "inpaint"])
    parser.add_argument("--name", default="world_models", help="results file stem under bench/results/")
    args = parser.parse_args()
    torch.manual_seed(0)
    t2i = load_pipeline(args.model_dir / "t2i", "t2i", device="cpu", dtype="fp32")
    n, steps, g = args.n, args.steps, args.guidance
    report: dict[str, object] = {"model_dir": str(args.model_dir), "n": n, "steps": steps, "guidance": g,
                                 "scheduler": "ddim", "device": "cpu (2 cores)",
                                 "torch_threads": torch.get_num_threads()}
    report["vae_clean_recon_caption_accuracy"] = vae_gate_accuracy(t2i.vae, n=200, seed=HELD_OUT)
    single, single_imgs, single_scenes = caption_accuracy(t2i, n, [1], HELD_OUT + 1, steps, g)
    multi, multi_imgs, multi_scenes = caption_accuracy(t2i, n, [2, 3], HELD_OUT + 2, steps, g)
    report["t2i_single"] = vars(single)
    report["t2i_multi"] = vars(multi)
    report["t2i_layout_source"] = layout_source(t2i, max(n // 10, 4), HELD_OUT + 7, steps, g)
    if "inpaint" in args.parts:
        inp = load_pipeline(args.model_dir / "inpaint", "inpaint", device="cpu", dtype="fp32")
        report["erase"] = vars(edit_scores(inp, "remove", n, HELD_OUT + 3, steps, g))
        report["recolor"] = vars(edit_scores(inp, "recolor", n, HELD_OUT + 4, steps, g))
        report["outpaint_background_accuracy"] = outpaint_background(inp, n, HELD_OUT + 5, steps, g)
    report["utility_spread"] = utility_spread(t2i, max(n // 4, 8), 4, HELD_OUT + 6, steps, g)
    report["t2i_samples_per_second_batch32"] = samples_per_second(t2i, 32, steps)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    for tag, scenes, images in (("", single_scenes, single_imgs), ("_multi", multi_scenes, multi_imgs)):
        save_grid_png([[render(s) for s in scenes[:8]], list(images[:8])], RESULTS / f"{args.name}_grid{tag}.png",
                      ["caption's render", "text-to-image sample"], [s.caption for s in scenes[:8]],
                      f"held-out captions with {'2-3 objects' if tag else 'one object'}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
