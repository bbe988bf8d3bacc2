"""Is PeFL exploiting its reward? The rewards' accuracy on the fine-tuned model's own samples.

A reward model is measured on held-out pairs of the pools it learned from (bench/reward_quality.py,
bench/feedback_quality.py); PeFL then moves the generator to images the reward scores higher, and
its accuracy there is what decides whether feedback learning helps. This bench fine-tunes the base
inpainting model with PeFL on the given rewards (the recipe of bench/feedback_quality.py), samples
the held-out examples with the base (two seeds) and with the fine-tuned model (the first seed), and
reports, against the world's default utility (the simulated annotators' taste, noise-free):
- each reward's pairwise accuracy on base-vs-base pairs (two samples of the same example: the
  generated pool the reward learned from) and on base-vs-PeFL pairs (the same example and seed),
  over the pairs whose utilities differ by at least the panel's "same" margin;
- the mean change of each utility feature (sharpness, clean, color, centring, faithfulness) and of
  each reward from base to PeFL, overall and per task: what PeFL traded for the reward.

    .venv/bin/python bench/reward_hacking.py --aesthetic DIR --alignment DIR      # ~10 CPU-minutes

Writes bench/results/reward_hacking.json and prints a markdown table. For versions in the registry,
`editloop eval reward-drift REWARD --editor EDITOR` measures the same agreement on an editor's own samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from editloop.models.base import base_model_dir
from editloop.models.zoo import load_pipeline
from editloop.world.annotators import DEFAULT_WEIGHTS, FEATURES, features
from trainers.evaluation.rewards import agreement as shared_agreement
from trainers.feedback.evaluate import SAME_MARGIN, image_rewards, sample
from trainers.feedback.examples import FeedbackExample, feedback_examples
from trainers.feedback.loop import train_feedback
from trainers.feedback.progressive import stage_config
from trainers.feedback.rewards import load_rewards


def feature_matrix(images: np.ndarray, examples: list[FeedbackExample]) -> np.ndarray:
    """N x len(FEATURES): the annotators' quality features of each image for its example's target."""
    return np.stack([features(img, ex.target) for img, ex in zip(images, examples)])


def agreement(score_a: np.ndarray, score_b: np.ndarray, u_a: np.ndarray, u_b: np.ndarray) -> dict:
    """Share of pairs the score orders as the utility does, over pairs with |u_a - u_b| >= SAME_MARGIN."""
    got = shared_agreement(score_a, score_b, u_a, u_b, SAME_MARGIN)
    return {k: got[k] for k in ("accuracy", "pairs", "se")}


def by_task(values: np.ndarray, tasks: list[str]) -> dict[str, float]:
    names = np.array(tasks)
    return {t: float(values[names == t].mean()) for t in sorted(set(tasks))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aesthetic", type=Path, required=True, help="trained aesthetic reward directory")
    parser.add_argument("--alignment", type=Path, required=True, help="trained alignment reward directory")
    parser.add_argument("--steps", type=int, default=60, help="PeFL steps")
    parser.add_argument("--eval", type=int, default=144, help="held-out examples (a third each task)")
    parser.add_argument("--eval-seed", type=int, default=950_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "reward_hacking.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rewards = load_rewards({"aesthetic": args.aesthetic, "alignment": args.alignment})
    examples = feedback_examples(args.eval, args.eval_seed)
    tasks = [e.task for e in examples]
    pipe = load_pipeline(base_model_dir("inpaint"), "inpaint", device="cpu", dtype="fp32")
    images = {"base": sample(pipe, examples, args.eval_seed, 20).images,
              "base, other seed": sample(pipe, examples, args.eval_seed + 10**6, 20).images}
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        train_feedback(pipe, rewards, stage_config("pefl", steps=args.steps), Path(tmp) / "run")
    images["pefl"] = sample(pipe, examples, args.eval_seed, 20).images
    w = np.array([DEFAULT_WEIGHTS[k] for k in FEATURES])
    feats = {name: feature_matrix(imgs, examples) for name, imgs in images.items()}
    util = {name: f @ w for name, f in feats.items()}
    scores = {name: image_rewards(rewards, imgs, examples) for name, imgs in images.items()}
    for s in scores.values():
        s["sum"] = sum(s[k] for k in ("aesthetic", "alignment"))
    pairs = {"base vs base (other seed)": ("base", "base, other seed"), "PeFL vs base (same seed)": ("pefl", "base")}
    result = {"command": "bench/reward_hacking.py " + " ".join(sys.argv[1:]),
              "mean_utility": {name: float(u.mean()) for name, u in util.items()},
              "agreement": {label: {kind: agreement(scores[a][kind], scores[b][kind], util[a], util[b])
                                    for kind in ("aesthetic", "alignment", "sum")}
                            for label, (a, b) in pairs.items()},
              "feature_change": {k: {"all": float((feats["pefl"][:, i] - feats["base"][:, i]).mean()),
                                     **by_task(feats["pefl"][:, i] - feats["base"][:, i], tasks)}
                                 for i, k in enumerate(FEATURES)},
              "weighted_feature_change": {k: float(w[i] * (feats["pefl"][:, i] - feats["base"][:, i]).mean())
                                          for i, k in enumerate(FEATURES)},
              "reward_change": {kind: {"all": float((scores["pefl"][kind] - scores["base"][kind]).mean()),
                                       **by_task(scores["pefl"][kind] - scores["base"][kind], tasks)}
                                for kind in ("aesthetic", "alignment")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["mean_utility"]))
    print("\n| pairs | aesthetic | alignment | sum |\n| --- | --- | --- | --- |")
    for label, row in result["agreement"].items():
        print(f"| {label} | " + " | ".join(f"{row[k]['accuracy']:.3f} (n = {row[k]['pairs']})"
                                            for k in ("aesthetic", "alignment", "sum")) + " |")
    print("\n| PeFL - base | all | erase | inpaint | outpaint | x weight |\n| --- | --- | --- | --- | --- | --- |")
    for k, row in {**result["feature_change"], **result["reward_change"]}.items():
        weighted = result["weighted_feature_change"].get(k)
        print(f"| {k} | {row['all']:+.3f} | {row['erase']:+.3f} | {row['inpaint']:+.3f} | {row['outpaint']:+.3f} | "
              + (f"{weighted:+.3f} |" if weighted is not None else "- |"))


if __name__ == "__main__":
    main()
