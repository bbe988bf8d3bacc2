"""PeFL, Diffusion-DPO and online GRPO on the same labels, judged on the same held-out edits (issue 34).

    .venv/bin/python bench/method_compare.py --out bench/results/method_compare.json \
        --cache .editloop/bench/feedback_cache          # ~70 CPU-minutes per taste with a cold cache, alone
    bash bench/gpu_method_compare.sh                    # on a lent GPU machine (--device cuda; see the script)

Per taste (--tastes): the committed base inpainting model's own samples on training examples (--sets examples x 4
candidates, 20 steps; generated once, kept in --cache), each set labelled best/worst by the taste's simulated panel
(bench/feedback_quality.py's labelling, seed 21). From those labels:
- an aesthetic reward (reads the source and mask), trained as bench/feedback_quality.py trains it; an alignment
  reward on world captions and a coherence reward on the base's composites (taste-independent, trained once);
- PeFL (phase 1, KL 100: the recipe `editloop train pefl` runs) against aesthetic + alignment;
- Diffusion-DPO straight from the same labels' pairs (trainers/feedback/dpo.py), no reward in the loss;
- GRPO (trainers/feedback/grpo.py) against the aesthetic reward and coherence (weight --coherence), alignment held
  out as its guard, scored in-process (the numbers a reward service answers; tests/test_grpo.py checks they agree);
- GRPO with the coherence reward off (what preservation costs).
On --eval held-out examples (seeds apart from the labelled ones; a third each task), every model sampled at 20
steps with the same seed: the panel's GSB superiority vs base (every annotator judges every pair), mean utility,
world-judge success, erase preservation (the judge: the other objects kept), L1 outside the mask (0..1), the
aesthetic reward's accuracy on the model's own samples against the base's (bench/reward_hacking.py's measure:
does the reward still order what the model makes as the panel does?), the gate's verdict, and training CPU-minutes.
Writes JSON, a markdown table (stdout) and a grid per taste (rows named in the JSON and the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedback_quality import (
    GENERATED,
    HELD_OUT,
    cache_name,
    compare,
    generated_pairs,
    generated_pool,
    measure,
    model_fingerprint,
    train_aesthetic_reward,
    train_alignment_reward,
)
from reward_hacking import agreement

from editloop.cli.train import RECIPE_KL_WEIGHT
from editloop.guidances import parse_guidances
from editloop.models.base import base_model_dir
from editloop.models.reward import save_reward, tiny_reward
from editloop.models.zoo import load_pipeline
from editloop.world.annotators import DEFAULT_WEIGHTS, reversed_weights
from editloop.world.edits import edit_preservation
from editloop.world.io import save_grid_png
from editloop.world.judge import judge
from trainers.feedback.dpo import DpoData, dpo_step
from trainers.feedback.evaluate import image_rewards
from trainers.feedback.examples import feedback_examples
from trainers.feedback.grpo import grpo_step, hacking_guard
from trainers.feedback.loop import train_feedback
from trainers.feedback.progressive import stage_config
from trainers.feedback.reward_client import LocalScorer
from trainers.feedback.rewards import load_rewards
from trainers.feedback.run import EvalConfig, promotion_guards
from trainers.reward.loop import LoopConfig

TASTES = {"default": DEFAULT_WEIGHTS, "reversed": reversed_weights()}
METHODS = ("pefl", "dpo", "grpo", "grpo-no-coherence")
LABEL_SEED = 21  # feedback_quality's labelling seed of the base's generated pool: the aesthetic reward's labels


def train_coherence_reward(cache: Path, n_train: int, steps: int, device: str = "cpu") -> Path:
    """The coherence reward on the base's composites (taste-independent; kept in `cache`)."""
    from trainers.reward.coherence import coherence_examples, pixel_auc, train_coherence

    base = base_model_dir("inpaint")
    where = cache / cache_name("coherence", n=n_train, steps=steps, base=model_fingerprint(base))
    if (where / "result.json").is_file():
        return where
    pipe = load_pipeline(base, "inpaint", device=device, dtype="fp32")
    train, held_out = coherence_examples(pipe, n_train, 0), coherence_examples(pipe, max(32, n_train // 4), 10_000)
    torch.manual_seed(0)
    best, _ = train_coherence(tiny_reward("coherence", 0), train, held_out,
                              LoopConfig(steps=steps, eval_every=max(50, steps // 4), patience=4,
                                         checkpoint_every=10**9), Path(tempfile.mkdtemp()))
    auc = pixel_auc(best, held_out)
    save_reward(best, "coherence", where, version="bench-coherence")
    (where / "result.json").write_text(json.dumps({"pixel_auc": auc, "n_train": n_train, "steps": steps}))
    print(f"  coherence reward: held-out pixel AUC {auc:.3f}", flush=True)
    return where


def tune(method: str, rewards, steps: int, out: Path, device: str, step=None, **overrides
         ) -> tuple[Path, dict, list]:
    """Fine-tune the base with `method` (a feedback-lifecycle stage) on `device`; (model dir, {"cpu_s": process
    CPU-seconds, "wall_s": wall seconds of training}, history)."""
    pipe = load_pipeline(base_model_dir("inpaint"), "inpaint", device=device, dtype="fp32")
    cfg = stage_config(method, steps=steps, **overrides)
    t0, w0 = time.process_time(), time.perf_counter()
    state = train_feedback(pipe, rewards, cfg, out / "run", step=step)
    cost = {"cpu_s": time.process_time() - t0, "wall_s": time.perf_counter() - w0}
    pipe.save_pretrained(out / "model", safe_serialization=True)
    (out / "history.json").write_text(json.dumps(state.history))
    return out / "model", cost, state.history


def erase_preservation(images: np.ndarray, examples) -> float:
    """The judge's verdict on erase edits: every object the edit should keep is still there, unchanged."""
    got = [edit_preservation(judge(img), ex.edit) for img, ex in zip(images, examples) if ex.task == "erase"]
    return float(np.mean(got))


def judged_row(method: str, got: dict, base: dict, examples, rewards, weights, base_scores: np.ndarray) -> dict:
    """One table row: the panel's GSB vs base, the world's verdicts and the reward's agreement on own samples."""
    row = compare(method, got, base, weights, [e.task for e in examples])
    row["erase_preservation"] = erase_preservation(got["images"], examples)
    scores = image_rewards(rewards, got["images"], examples)["aesthetic"]
    row["reward_accuracy_vs_base"] = agreement(scores, base_scores, got["utility"], base["utility"])
    return row


def save_grid(path: Path, examples, results: dict, name: str) -> None:
    grid = [[np.where(e.mask[..., None] > 0, (e.source * 0.4).astype(np.uint8), e.source) for e in examples[:9]]]
    grid += [list(r["images"][:9]) for r in results.values()]
    save_grid_png(grid, path, ["source (mask darkened)", *results], [f"{e.task}: {e.prompt}" for e in examples[:9]],
                  f"held-out edits, {name} taste")


def run_taste(name: str, args: argparse.Namespace, root: Path, alignment: Path, coherence: Path,
              save: Callable[[dict], None]) -> dict:
    """Train and judge every method for one taste; `save` gets the result after each method (a bench stopped at a
    time limit keeps the methods it finished)."""
    weights = TASTES[name]
    print(f"taste: {name}", flush=True)
    base = base_model_dir("inpaint")
    pool = {"guidances": args.guidances, "device": args.device}
    generated = {"train": generated_pool(base, args.sets, 4, GENERATED, 20, args.cache, **pool),
                 "eval": generated_pool(base, max(args.sets // 5, 16), 4, GENERATED + 5000, 20, args.cache, **pool)}
    reward_args = argparse.Namespace(label_pool="generated", labels=args.sets, reward_steps=args.reward_steps,
                                     reward_reads_source=True, reward_cache=args.cache, device=args.device)
    aesthetic = train_aesthetic_reward(root, weights, reward_args, name, generated)
    image_only = None
    if args.image_only_reward:  # the same labels (same panel seed) and recipe, the reward reading the edited image
        # alone; its own root, since a pool's labelled database is kept under its root with or without sources
        image_only = train_aesthetic_reward(root / "image-only", weights,
                                            argparse.Namespace(**{**vars(reward_args), "reward_reads_source": False}),
                                            name, generated)
    rewards = load_rewards({"aesthetic": aesthetic["path"], "alignment": alignment, "coherence": coherence})
    rewards.to(torch.device(args.device))
    pairs, images = generated_pairs(root / f"{name}-dpo", generated["train"], weights, LABEL_SEED, with_source=True)
    batch = {k: v for k, v in (("batch_size", args.batch_size), ("ema_decay", args.ema_decay)) if v is not None}
    grpo = {"scorer": "in-process", "coherence_weight": args.coherence, "train_fraction": args.grpo_fraction}
    runs = {
        "pefl": lambda: tune("pefl", rewards, args.pefl_steps, root / f"{name}-pefl", args.device,
                             kl_weight=RECIPE_KL_WEIGHT, reward_weights={"aesthetic": 1.0, "alignment": 1.0},
                             **batch),
        "dpo": lambda: tune("dpo", rewards, args.dpo_steps, root / f"{name}-dpo", args.device,
                            step=dpo_step(DpoData(pairs, []), images), **batch),
        "grpo": lambda: tune("grpo", rewards, args.grpo_steps, root / f"{name}-grpo", args.device,
                             step=grpo_step(LocalScorer(rewards)), grpo=grpo, lr=args.grpo_lr, **batch),
        "grpo-no-coherence": lambda: tune("grpo", rewards, args.grpo_steps, root / f"{name}-grpo-nc", args.device,
                                          step=grpo_step(LocalScorer(rewards)),
                                          grpo={**grpo, "coherence_weight": 0.0}, lr=args.grpo_lr, **batch),
    }
    examples = feedback_examples(args.eval, HELD_OUT)
    results = {"base": measure(base, 20, examples, HELD_OUT, rewards, weights, device=args.device)}
    base_scores = image_rewards(rewards, results["base"]["images"], examples)["aesthetic"]
    grid_path = args.out.with_name(f"{args.out.stem}_grid_{name}.png")
    out = {"taste": name, "labels": args.sets, "pairs": len(pairs), "guidances": args.guidances,
           "rows": [judged_row("base", results["base"], results["base"], examples, rewards, weights, base_scores)],
           "aesthetic_reward_accuracy": aesthetic["heldout_accuracy"], "annotators_ceiling": aesthetic["ceiling"],
           "aesthetic_reward_eval_pairs": aesthetic.get("eval_pairs"),
           "image_only_reward_accuracy": image_only["heldout_accuracy"] if image_only else None,
           "grid": str(grid_path), "grid_columns": [f"{e.task}: {e.prompt}" for e in examples[:9]],
           "histories": {}, "grid_rows": ["source (mask darkened)", "base"]}
    save(out)
    for method in args.methods:
        path, cost, history = runs[method]()
        print(f"  {method}: trained in {cost['wall_s']:.0f} s ({cost['cpu_s'] / 60:.1f} CPU-minutes)", flush=True)
        results[method] = measure(path, 20, examples, HELD_OUT, rewards, weights, device=args.device)
        row = judged_row(method, results[method], results["base"], examples, rewards, weights, base_scores)
        row.update(train_cpu_minutes=cost["cpu_s"] / 60, train_wall_minutes=cost["wall_s"] / 60, device=args.device)
        row["gate_refuses"] = promotion_guards(row, results["base"]["metrics"], EvalConfig().success_tolerance,
                                               "the base")
        if method.startswith("grpo"):
            row["gate_refuses"] += hacking_guard(row, results["base"]["metrics"], stage_config("grpo", grpo=grpo).grpo,
                                                 "the base")
        out["rows"].append(row)
        out["histories"][method] = history[-10:]
        save_grid(grid_path, examples, results, name)
        out["grid_rows"] = ["source (mask darkened)", *results]
        save(out)
    return out


def table(result: dict) -> str:
    lines = [f"taste {result['taste']} ({result['labels']} labels, {result['pairs']} pairs)",
             "| model | GSB vs base | superiority | mean utility | success | erase preservation | L1 outside "
             "| reward acc. on own samples | train CPU-min (wall-min) | gate |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        gate = "-" if r["model"] == "base" else ("; ".join(r["gate_refuses"]) or "would promote")
        acc = r["reward_accuracy_vs_base"]["accuracy"]
        lines.append(f"| {r['model']} | {'/'.join(map(str, r['gsb']))} | {r['superiority']:.3f} | "
                     f"{r['mean_utility']:.3f} | {r['success']:.3f} | {r['erase_preservation']:.3f} | "
                     f"{r['l1_outside']:.4f} | {acc:.3f} | {r.get('train_cpu_minutes', 0):.1f} "
                     f"({r.get('train_wall_minutes', 0):.1f}) | {gate} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/method_compare.json"))
    parser.add_argument("--tastes", default="default,reversed")
    parser.add_argument("--sets", type=int, default=320, help="labelled edit sets (one best/worst answer each)")
    parser.add_argument("--reward-steps", type=int, default=400)
    parser.add_argument("--alignment-steps", type=int, default=200)
    parser.add_argument("--coherence-train", type=int, default=256, help="composites the coherence reward sees")
    parser.add_argument("--coherence-steps", type=int, default=300)
    parser.add_argument("--pefl-steps", type=int, default=60)
    parser.add_argument("--dpo-steps", type=int, default=150)
    parser.add_argument("--grpo-steps", type=int, default=30)
    parser.add_argument("--grpo-lr", type=float, default=5e-5)
    parser.add_argument("--grpo-fraction", type=float, default=0.25, help="GRPO's share of sampling steps trained")
    parser.add_argument("--coherence", type=float, default=0.5, help="GRPO's coherence reward weight")
    parser.add_argument("--eval", type=int, default=96, help="held-out examples (a third each task)")
    parser.add_argument("--cache", type=Path, default=Path(".editloop/bench/feedback_cache"))
    parser.add_argument("--methods", default=",".join(METHODS), help="which to train and judge against the base")
    parser.add_argument("--image-only-reward", action="store_true",
                        help="also train the aesthetic reward without the source and mask channels on the same labels "
                             "and report its held-out accuracy (the methods use the platform's, which reads them)")
    parser.add_argument("--guidances", default="",
                        help="per-candidate text guidance of the labelled sets, cycled (the loop's varied sets, e.g. "
                             "1.0,2.5,4.0,7.0); empty: all at 4.0")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="every method's batch (GRPO: edits x group); default: each stage's own")
    parser.add_argument("--ema-decay", type=float, default=None, help="the saved EMA's decay (default: the stage's)")
    parser.add_argument("--device", default="cpu", help="where the models sample and train (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    try:
        args.guidances = parse_guidances(args.guidances, "--guidances")
    except ValueError as err:
        parser.error(str(err))
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown[0]!r}; methods: {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="method-compare-"))
    alignment = train_alignment_reward(root, args.alignment_steps, args.cache)["path"]
    coherence = train_coherence_reward(args.cache, args.coherence_train, args.coherence_steps, args.device)
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "tastes": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(taste: dict) -> None:
        out["tastes"][taste["taste"]] = taste
        args.out.write_text(json.dumps(out, indent=1, default=float))

    for name in [t.strip() for t in args.tastes.split(",") if t.strip()]:
        print(table(run_taste(name, args, root, alignment, coherence, save)), flush=True)


if __name__ == "__main__":
    main()
