"""Diffusion-DPO on the panel's labels: does the editor get better as the panel sees it? (issue 34)

    .venv/bin/python bench/dpo_quality.py --out bench/results/dpo_quality.json      # ~15 minutes per taste, alone

For each taste (--tastes): the committed base inpainting model's own samples on training examples (--sets
examples x 4 candidates, 20 steps; generated once and kept in --cache), each set labelled best/worst by one
annotator of the taste's simulated panel and written to a database as a labelling round would; the pairs a DPO
run reads (every (best, other) and (other, worst)); DPO fine-tunes the base for --steps with the run's own step
(trainers/feedback/dpo.py) against the frozen base. On --eval held-out examples (seeds apart from the labelled
ones; a third each task), base and DPO sampled at 20 steps: the panel's GSB superiority of DPO vs base (every
annotator judges every pair), mean utility, world-judge success, and the mean L1 outside the mask (preservation,
0..1). No reward model enters the loss; the rewards' scores are not reported (the harness's reward is untrained).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedback_quality import GENERATED, HELD_OUT, compare, generated_pairs, generated_pool, measure

from editloop.models.base import base_model_dir
from editloop.models.reward import save_reward, tiny_reward
from editloop.models.zoo import load_pipeline
from editloop.world.annotators import DEFAULT_WEIGHTS, reversed_weights
from trainers.feedback.dpo import DpoData, dpo_step
from trainers.feedback.evaluate import outside_l1
from trainers.feedback.examples import feedback_examples
from trainers.feedback.loop import train_feedback
from trainers.feedback.progressive import stage_config
from trainers.feedback.rewards import load_rewards

TASTES = {"default": DEFAULT_WEIGHTS, "reversed": reversed_weights()}


def run_taste(name: str, args: argparse.Namespace, root: Path, rewards) -> dict:
    weights = TASTES[name]
    base = base_model_dir("inpaint")
    pool = generated_pool(base, args.sets, 4, GENERATED, 20, args.cache)
    pairs, cache = generated_pairs(root / name, pool, weights, seed=11, with_source=True)
    pipe = load_pipeline(base, "inpaint", device="cpu", dtype="fp32")
    cfg = stage_config("dpo", steps=args.steps, batch_size=args.batch_size, lr=args.lr, dpo_beta=args.beta)
    t0 = time.time()
    state = train_feedback(pipe, rewards, cfg, root / name / "run", step=dpo_step(DpoData(pairs, []), cache))
    train_s = time.time() - t0
    pipe.save_pretrained(root / name / "model", safe_serialization=True)
    examples = feedback_examples(args.eval, HELD_OUT)
    tasks = [e.task for e in examples]
    before = measure(base, 20, examples, HELD_OUT, rewards, weights)
    after = measure(root / name / "model", 20, examples, HELD_OUT, rewards, weights)
    rows = [compare("base", before, before, weights, tasks), compare("dpo", after, before, weights, tasks)]
    for row, got in zip(rows, (before, after)):
        row["outside_l1"] = outside_l1(got["images"], examples)
        for key in [k for k in row if k.startswith("reward_") or k in ("feedback_score",)]:
            row.pop(key)
    last = state.history[-20:]
    return {"taste": name, "pairs": len(pairs), "labels": args.sets, "train_cpu_s": train_s, "rows": rows,
            "implicit_accuracy_last20": float(np.mean([h["implicit_accuracy"] for h in last])),
            "loss_last20": float(np.mean([h["loss"] for h in last]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/dpo_quality.json"))
    parser.add_argument("--tastes", default="default,reversed")
    parser.add_argument("--sets", type=int, default=320, help="labelled edit sets (one best/worst answer each)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--beta", type=float, default=5000.0)
    parser.add_argument("--eval", type=int, default=96)
    parser.add_argument("--cache", type=Path, default=Path(".editloop/bench/cache"))
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "base": "committed base (editloop/weights/base)",
              "tastes": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_reward(tiny_reward("aesthetic", seed=0), "aesthetic", root / "harness-reward")
        rewards = load_rewards({"aesthetic": root / "harness-reward"})
        for name in args.tastes.split(","):
            report["tastes"].append(run_taste(name, args, root, rewards))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))
    for taste in report["tastes"]:
        print(f"\n{taste['taste']} taste: {taste['pairs']} pairs, DPO train {taste['train_cpu_s']:.0f} s, "
              f"implicit accuracy (last 20 steps) {taste['implicit_accuracy_last20']:.2f}")
        print("| model | GSB superiority vs base | mean utility | judged success | L1 outside mask |")
        print("| --- | --- | --- | --- | --- |")
        for row in taste["rows"]:
            print(f"| {row['model']} | {row['superiority']:.3f} | {row['mean_utility']:.3f} | {row['success']:.3f} | "
                  f"{row['outside_l1']:.4f} |")


if __name__ == "__main__":
    main()
