"""Does feedback learning make the editor better, as a panel of simulated annotators sees it? (issue 6)

    .venv/bin/python bench/feedback_quality.py --out bench/results/feedback_quality.json

For each taste (the default utility weights, then the same weights reversed):
1. a panel of simulated annotators labels candidate sets (best/worst of 4) and an aesthetic reward trains
   on those labels (the same code path as a training run); the sets are world renders of the quality mix
   (`--label-pool renders`), the base generator's own samples on training examples (`generated`, ByteEdit's
   data flow; sampled once and kept in --reward-cache), or both; with --reward-reads-source the generated
   sets carry each example's source and mask, which the aesthetic reward reads (the source masked, as the
   inpainting model sees it); an alignment reward trains on world captions with one-attribute hard
   negatives (taste-independent, trained once);
2. PeFL fine-tunes the committed base inpainting model against both rewards (phase 1, T = 20);
   (with --task-reward-scale, a second PeFL model with the reward loss scaled per task);
3. progressive phase 2 continues from it (or the per-task model) at (T, T1, T2) = (8, 6, 3) (default taste only);
4. on held-out examples (inpaint, erase, outpaint; seeds apart from training): the panel's mean
   utility (also per task), GSB superiority and win rate of each model against the base (every annotator judges every
   pair side by side), world-judge success, and sampling time per image.
Writes JSON, a markdown table (stdout) and a picture grid per taste.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reward_hacking import agreement
from reward_quality import _Merged, pool_pairs, utility_accuracy
from tqdm import tqdm

from editloop.cli.train import parse_task_scales
from editloop.guidances import by_guidance
from editloop.labels.simulated import image_candidate_sets
from editloop.models.base import base_model_dir
from editloop.models.reward import save_reward, tiny_reward
from editloop.models.tokenizer import build_tokenizer
from editloop.models.zoo import load_pipeline, set_timestep_spacing
from editloop.world.annotators import DEFAULT_WEIGHTS, panel, reversed_weights
from editloop.world.io import save_grid_png
from trainers.feedback.evaluate import (
    evaluate_samples,
    image_rewards,
    panel_gsb,
    sample,
    utilities,
    utility_by_task,
)
from trainers.feedback.examples import feedback_examples
from trainers.feedback.loop import train_feedback
from trainers.feedback.progressive import stage_config
from trainers.feedback.rewards import load_rewards
from trainers.feedback.run import EvalConfig, promotion_guards
from trainers.reward.aesthetic import pairwise_accuracy, train_aesthetic
from trainers.reward.data import ImageCache
from trainers.reward.loop import LoopConfig

HELD_OUT = 930_000
GENERATED = 610_000  # seeds of the examples whose generated samples the panel labels (apart from HELD_OUT)
ONPOLICY = 620_000  # seeds of the examples the PeFL model samples for --onpolicy-sets


def cache_name(kind: str, **recipe: object) -> str:
    """Where --reward-cache keeps a result: a run with another recipe (labels, steps, base weights) must not pick
    up this one's."""
    return f"{kind}-{hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]}"


def model_fingerprint(model: Path) -> str:
    """A digest of the model's UNet weights and scheduler config (generated samples are kept only for the weights
    and the timesteps that made them)."""
    digest = hashlib.sha1()
    for f in [*sorted((model / "unet").glob("*.safetensors")), model / "scheduler" / "scheduler_config.json"]:
        digest.update(f.read_bytes())
    return digest.hexdigest()[:10]


@dataclass(frozen=True)
class GeneratedPool:
    """The base generator's own samples on training examples: `images` is (sets, candidates, H, W, 3)."""

    prompts: list[str]
    images: np.ndarray
    sources: np.ndarray  # (sets, H, W, 3): the image each example edits
    masks: np.ndarray  # (sets, H, W): what the generator regenerated


def generated_pool(model: Path, n_sets: int, n_images: int, seed: int, steps: int, cache_dir: Path,
                   chunk: int = 64, guidances: tuple[float, ...] | None = None, device: str = "cpu"
                   ) -> GeneratedPool:
    """`n_images` samples per example of `feedback_examples(n_sets, seed)` (taste-independent: generated once and
    kept in `cache_dir`, then labelled by each taste's panel). With `guidances`, candidate j of every set is sampled
    at guidances[j % len] (the loop's varied sets, editloop/guidances.py); else all at the sampler's 4.0."""
    examples = feedback_examples(n_sets, seed)
    prompts = [e.prompt for e in examples]
    sources, masks = np.stack([e.source for e in examples]), np.stack([e.mask for e in examples])
    varied = "" if guidances is None else "-g" + "_".join(f"{g:g}" for g in guidances)
    path = cache_dir / f"generated-{seed}-{n_sets}x{n_images}-{steps}steps{varied}-{model_fingerprint(model)}.npz"
    if path.is_file():
        return GeneratedPool(prompts, np.load(path)["images"], sources, masks)
    pipe = load_pipeline(model, "inpaint", device=device, dtype="fp32")
    repeated = [e for e in examples for _ in range(n_images)]
    per_image = [4.0 if guidances is None else guidances[i % n_images % len(guidances)] for i in range(len(repeated))]

    def make(guidance: float, idx: list[int]) -> list[np.ndarray]:
        parts = []
        for start in tqdm(range(0, len(idx), chunk), desc=f"generating {len(idx)} candidates at {guidance:g}",
                          unit="chunk"):
            part = [repeated[i] for i in idx[start:start + chunk]]
            parts.append(sample(pipe, part, seed + idx[start], steps, guidance).images)
        return list(np.concatenate(parts))

    images = np.stack(by_guidance(per_image, make)).reshape(n_sets, n_images, *examples[0].source.shape)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")  # several benches may share the cache
    np.savez_compressed(partial, images=images)
    os.replace(partial, path)
    return GeneratedPool(prompts, images, sources, masks)


def generated_pairs(root: Path, pool: GeneratedPool, weights: dict[str, float], seed: int,
                    with_source: bool = False) -> tuple[list, ImageCache]:
    """The pool's candidate sets written to a database and labelled best/worst by the taste's panel; with
    `with_source` each set carries its example's source and mask, the reward trained on them reads both
    (`reads_source`), and PeFL scores each edit with them."""
    context = {"sources": pool.sources, "masks": pool.masks} if with_source else {}
    return pool_pairs(root, len(pool.prompts), seed, weights,
                      lambda sessions, store: image_candidate_sets(sessions, store, pool.prompts, pool.images,
                                                                   **context))


def onpolicy_prefix(k: int) -> str:
    """Pool names of on-policy round k (round 1 keeps the name its cached rewards were made under)."""
    return "onpolicy-" if k == 1 else f"onpolicy{k}-"


def generated_pool_names(generated: dict[str, GeneratedPool]) -> list[tuple[str, str, int]]:
    """(name, key prefix, labelling seed) of each generated pool pair present: the base's, then each on-policy
    round's (seeds 21, 31, 41, ...: each pool labelled by its own draw of the panel's noise)."""
    names = [("generated", "", 21)] if "train" in generated else []
    k = 1
    while f"{onpolicy_prefix(k)}train" in generated:
        names.append(("onpolicy" if k == 1 else f"onpolicy{k}", onpolicy_prefix(k), 21 + 10 * k))
        k += 1
    return names


def label_pools(root: Path, weights: dict[str, float], args: argparse.Namespace, tag: str,
                generated: dict[str, GeneratedPool]) -> dict[str, tuple[list, list, ImageCache]]:
    """name -> (training pairs, held-out pairs, images) for each pool `--label-pool` asks for."""
    pools = {}
    if args.label_pool in ("renders", "both"):
        train, train_cache = pool_pairs(root / f"{tag}-train", args.labels, 11, weights)
        held_out, eval_cache = pool_pairs(root / f"{tag}-eval", 200, 5011, weights)
        pools["renders"] = (train, held_out, _Merged(train_cache, eval_cache))
    for name, prefix, seed in generated_pool_names(generated):
        if args.label_pool in ("generated", "both"):
            train, train_cache = generated_pairs(root / f"{tag}-{name}-train", generated[f"{prefix}train"], weights,
                                                 seed, args.reward_reads_source)
            held_out, eval_cache = generated_pairs(root / f"{tag}-{name}-eval", generated[f"{prefix}eval"], weights,
                                                   seed + 5000, args.reward_reads_source)
            pools[name] = (train, held_out, _Merged(train_cache, eval_cache))
    return pools


def select_half(held_out: list) -> tuple[list, list]:
    """(pairs that choose the checkpoint, pairs the accuracy is reported on): a held-out pool's sets split in half
    by a hash of their ids, so the reported accuracy is not one chosen on."""
    from trainers.reward.data import split_of

    chosen = [split_of(p.set_id, 0.5, salt="bench-select") == "eval" for p in held_out]
    return [p for p, c in zip(held_out, chosen) if c], [p for p, c in zip(held_out, chosen) if not c]


def train_aesthetic_reward(root: Path, weights: dict[str, float], args: argparse.Namespace, tag: str,
                           generated: dict[str, GeneratedPool]) -> dict:
    recipe = {"reads_source": True} if args.reward_reads_source else {}  # older cache entries keep their names
    # the checkpoint is chosen on half of each held-out pool's sets and the accuracy reported on the other half
    # (entries made before 2026-12-04 chose and reported on the same pairs, a slightly optimistic figure)
    recipe["select"] = "half"
    name = cache_name(f"{tag}-aesthetic", pool=args.label_pool, labels=args.labels, steps=args.reward_steps,
                      generated={k: (len(p.prompts), float(p.images.mean())) for k, p in generated.items()}, **recipe)
    if args.reward_cache is not None and (args.reward_cache / name / "result.json").is_file():
        saved = json.loads((args.reward_cache / name / "result.json").read_text())
        print(f"  aesthetic reward ({tag}): from {args.reward_cache} ({saved['heldout_accuracy']})")
        return {**saved, "path": args.reward_cache / name}
    pools = {pool: (tr, *select_half(ho), c) for pool, (tr, ho, c) in label_pools(root, weights, args, tag,
                                                                               generated).items()}
    train = [p for tr, _, _, _ in pools.values() for p in tr]
    held_out = [p for _, select, _, _ in pools.values() for p in select]
    cache = _Merged(*(c for _, _, _, c in pools.values()))
    torch.manual_seed(0)
    loop = LoopConfig(steps=args.reward_steps, eval_every=max(50, args.reward_steps // 6), patience=4,
                      checkpoint_every=10**9)
    device = getattr(args, "device", "cpu")  # the reward trains where the editor does (method_compare --device)
    best, _ = train_aesthetic(tiny_reward("aesthetic", 0).to(device), build_tokenizer(), train, held_out, cache, loop,
                              Path(tempfile.mkdtemp()), batch_size=32)
    accuracy = {pool: pairwise_accuracy(best, build_tokenizer(), ho, c) for pool, (_, _, ho, c) in pools.items()}
    ceiling = {pool: utility_accuracy(ho, c, weights) for pool, (_, _, ho, c) in pools.items()}
    where = (args.reward_cache or root) / name
    save_reward(best.cpu(), "aesthetic", where, version=f"bench-{tag}")
    result = {"heldout_accuracy": accuracy, "ceiling": ceiling, "label_pool": args.label_pool,
              "reads_source": bool(best.config.reads_source),
              "train_pairs": {pool: len(tr) for pool, (tr, _, _, _) in pools.items()}, "steps": args.reward_steps,
              "select_pairs": {pool: len(sel) for pool, (_, sel, _, _) in pools.items()},
              "eval_pairs": {pool: len(ho) for pool, (_, _, ho, _) in pools.items()}}
    (where / "result.json").write_text(json.dumps(result))
    print(f"  aesthetic reward ({tag}): held-out pairwise accuracy {accuracy} (annotators' ceiling {ceiling})",
          flush=True)
    return {**result, "path": where}


def train_alignment_reward(root: Path, steps: int, cache: Path | None = None) -> dict:
    from trainers.reward.alignment import accuracy_by_attribute, alignment_examples, train_alignment

    name = cache_name("alignment", steps=steps)
    if cache is not None and (cache / name / "result.json").is_file():
        saved = json.loads((cache / name / "result.json").read_text())
        print(f"  alignment reward: from {cache} (held-out accuracy {saved['heldout_accuracy']:.3f})")
        return {**saved, "path": cache / name}
    train, held_out = alignment_examples(3000, 0), alignment_examples(500, 10_000)
    torch.manual_seed(0)
    best, _ = train_alignment(tiny_reward("alignment", 0), build_tokenizer(), train, held_out,
                              LoopConfig(steps=steps, eval_every=max(50, steps // 4), patience=4,
                                         checkpoint_every=10**9), Path(tempfile.mkdtemp()), batch_size=32)
    acc = accuracy_by_attribute(best, build_tokenizer(), held_out)["all"]
    where = (cache or root) / name
    save_reward(best, "alignment", where, version="bench-alignment")
    (where / "result.json").write_text(json.dumps({"heldout_accuracy": acc, "steps": steps}))
    print(f"  alignment reward: held-out accuracy {acc:.3f}", flush=True)
    return {"path": where, "heldout_accuracy": acc}


def fine_tune(start: Path, rewards, stage: str, steps: int, out: Path, **overrides) -> tuple[Path, float]:
    pipe = load_pipeline(start, "inpaint", device="cpu", dtype="fp32")
    cfg = stage_config(stage, steps=steps, **overrides)
    t0 = time.time()
    state = train_feedback(pipe, rewards, cfg, out / "run")
    pipe.save_pretrained(out / "model", safe_serialization=True)
    (out / "history.json").write_text(json.dumps(state.history))
    return out / "model", time.time() - t0


def measure(model: Path, steps: int, examples, seed: int, rewards, weights, spacing: str | None = None,
            device: str = "cpu") -> dict:
    pipe = load_pipeline(model, "inpaint", device=device, dtype="fp32")
    if spacing is not None:  # the same weights sampled at other timesteps
        set_timestep_spacing(pipe, spacing)
    samples = sample(pipe, examples, seed, steps)
    metrics = evaluate_samples(samples, examples, rewards)
    u = utilities(samples.images, examples, weights)
    return {"metrics": metrics, "utility": u, "images": samples.images}


def compare(name: str, a: dict, base: dict, weights: dict[str, float], tasks: list[str]) -> dict:
    gsb = panel_gsb(a["utility"], base["utility"], panel(weights=weights, seed=7))
    by_task = utility_by_task(a["utility"], tasks)
    row = {"model": name, "mean_utility": float(a["utility"].mean()), "utility_by_task": by_task,
           "gsb": [gsb.good, gsb.same, gsb.bad], "superiority": gsb.superiority, "win_rate": gsb.win_rate,
           **a["metrics"]}
    return row


def onpolicy_round(root: Path, tag: str, weights: dict[str, float], args: argparse.Namespace, alignment: dict,
                   generated: dict[str, GeneratedPool], last_model: Path, base: Path, extra: dict,
                   k: int) -> dict:
    """ByteEdit's data flow once more (round k): the last PeFL model's own samples labelled by the panel, the
    aesthetic reward retrained from scratch on every pool so far with them, and PeFL again from the base with
    that reward. Returns the new pools with the rest."""
    keep = args.reward_cache or root
    prefix, seed = onpolicy_prefix(k), ONPOLICY + 10_000 * (k - 1)
    pools = {f"{prefix}train": generated_pool(last_model, args.onpolicy_sets, 4, seed, 20, keep),
             f"{prefix}eval": generated_pool(last_model, max(args.onpolicy_sets // 5, 16), 4, seed + 5000, 20,
                                             keep)}
    name = f"{tag}-onpolicy" if k == 1 else f"{tag}-onpolicy{k}"
    trained = train_aesthetic_reward(root, weights, args, name, {**generated, **pools})
    rewards = load_rewards({"aesthetic": trained["path"], "alignment": alignment["path"]})
    model, seconds = fine_tune(base, rewards, "pefl", args.pefl_steps, root / f"{tag}-pefl-{name}", **extra)
    print(f"  PeFL with the round-{k} on-policy reward: {args.pefl_steps} steps in {seconds:.0f}s", flush=True)
    return {"model": model, "rewards": rewards, "generated": {**generated, **pools},
            "report": {"aesthetic_reward_accuracy": trained["heldout_accuracy"], "sets": args.onpolicy_sets}}


def onpolicy_rounds(root: Path, tag: str, weights: dict[str, float], args: argparse.Namespace, alignment: dict,
                    generated: dict[str, GeneratedPool], pefl_model: Path, base: Path, extra: dict,
                    results: dict, rewards, examples, seed: int) -> dict:
    """`--onpolicy-rounds` rounds; each round's PeFL model joins `results`, and every reward (the first, then
    each round's) is scored on the pairs every PeFL model creates against the base (same example, same seed)."""
    report, models, all_rewards = {}, ["pefl"], {"first": rewards}
    last = pefl_model
    for k in range(1, args.onpolicy_rounds + 1):
        out = onpolicy_round(root, tag, weights, args, alignment, generated, last, base, extra, k)
        generated, last = out["generated"], out["model"]
        name = "pefl, on-policy reward" if k == 1 else f"pefl, on-policy reward {k}"
        results[name] = measure(last, 20, examples, seed, rewards, weights)
        report[f"round {k}"] = out["report"]
        models.append(name)
        all_rewards["on-policy" if k == 1 else f"on-policy {k}"] = out["rewards"]
    base_scores = {who: image_rewards(r, results["base"]["images"], examples)["aesthetic"]
                   for who, r in all_rewards.items()}
    report["aesthetic_agreement"] = {
        f"{who} reward, {model} vs base": agreement(image_rewards(r, results[model]["images"], examples)["aesthetic"],
                                                   base_scores[who], results[model]["utility"],
                                                   results["base"]["utility"])
        for who, r in all_rewards.items() for model in models}
    return report


def taste(root: Path, tag: str, weights: dict[str, float], args: argparse.Namespace, alignment: dict,
          generated: dict[str, GeneratedPool]) -> dict:
    print(f"taste: {tag}", flush=True)
    aesthetic = train_aesthetic_reward(root, weights, args, tag, generated)
    rewards = load_rewards({"aesthetic": aesthetic["path"], "alignment": alignment["path"]})
    base = base_model_dir("inpaint")
    extra: dict = {"lr": args.lr} if args.lr else {}
    if args.kl_weight:
        extra["kl_weight"] = args.kl_weight
    if args.calibrate:
        extra["calibration_examples"] = args.calibrate
    if args.reward_weight is not None:
        extra["reward_weights"] = {"aesthetic": args.reward_weight, "alignment": args.reward_weight}
    pefl_model, pefl_s = fine_tune(base, rewards, "pefl", args.pefl_steps, root / f"{tag}-pefl", **extra)
    print(f"  PeFL: {args.pefl_steps} steps in {pefl_s:.0f}s", flush=True)
    seed = args.eval_seed
    examples = feedback_examples(args.eval, seed)
    results = {"base": measure(base, 20, examples, seed, rewards, weights),
               "pefl": measure(pefl_model, 20, examples, seed, rewards, weights)}
    timings = {"pefl_seconds": pefl_s}
    fast_start = pefl_model
    if args.task_reward_scale:  # the same run with the reward loss scaled per task; progressive continues from it
        extra["task_reward_scale"] = parse_task_scales(args.task_reward_scale)
        fast_start, per_task_s = fine_tune(base, rewards, "pefl", args.pefl_steps, root / f"{tag}-pefl-per-task",
                                           **extra)
        timings["per_task_seconds"] = per_task_s
        results["pefl-per-task"] = measure(fast_start, 20, examples, seed, rewards, weights)
    if args.onpolicy_sets and tag == "default":
        timings["onpolicy"] = onpolicy_rounds(root, tag, weights, args, alignment, generated, pefl_model, base,
                                              extra, results, rewards, examples, seed)
    if args.ablation and tag == "default":  # the same run with the rewards switched off: the regulariser alone
        reg_only, _ = fine_tune(base, rewards, "pefl", args.pefl_steps, root / f"{tag}-reference-only",
                                **{**extra, "reward_weights": {"aesthetic": 0.0, "alignment": 0.0}})
        results["reference-only"] = measure(reg_only, 20, examples, seed, rewards, weights)
    if not args.skip_progressive and tag == "default":
        spacing = {"timestep_spacing": args.progressive_spacing} if args.progressive_spacing else {}
        fast_start = base if args.progressive_from == "base" else fast_start
        fast, prog_s = fine_tune(fast_start, rewards, "progressive", args.progressive_steps,
                                 root / f"{tag}-progressive", adversarial=None, **extra, **spacing)
        timings["progressive_seconds"] = prog_s
        results["progressive-8"] = measure(fast, 8, examples, seed, rewards, weights)
        # the phase-1 model sampled at 8 steps, untrained for them: what phase 2 adds over a sampler change
        results["pefl-8"] = measure(pefl_model, 8, examples, seed, rewards, weights, args.progressive_spacing)
        results["base-8"] = measure(base, 8, examples, seed, rewards, weights)
        if args.progressive_spacing:
            results[f"base-8-{args.progressive_spacing}"] = measure(base, 8, examples, seed, rewards, weights,
                                                                   args.progressive_spacing)
    tasks = [e.task for e in examples]
    rows = [compare(name, r, results["base"], weights, tasks) for name, r in results.items()]
    starts = {"progressive-8": "base" if args.progressive_from == "base" else
              "pefl-per-task" if args.task_reward_scale else "pefl"}
    for row in rows[1:]:  # what the registry's gate would say of each model against the model it started from
        parent = results[starts.get(row["model"], "base")]["metrics"]
        row["gate_refuses"] = promotion_guards(row, parent, EvalConfig().success_tolerance, "the start model")
    grid = [[np.where(e.mask[..., None] > 0, (e.source * 0.4).astype(np.uint8), e.source) for e in examples[:8]]]
    grid += [list(r["images"][:8]) for r in results.values()]
    grid_path = args.out.with_name(f"{args.out.stem}_grid_{tag}.png")
    save_grid_png(grid, grid_path, ["source (mask darkened)", *results],
                  [f"{e.task}: {e.prompt}" for e in examples[:8]], f"held-out edits, {tag} taste")
    for row in rows:
        print(f"  {row['model']}: utility {row['mean_utility']:.3f} "
              f"({', '.join(f'{t} {u:.3f}' for t, u in row['utility_by_task'].items())}), GSB vs base {row['gsb']} "
              f"(superiority {row['superiority']}, win rate {row['win_rate']}), success {row['success']:.3f}, "
              f"feedback score {row['feedback_score']:.3f}, {row['seconds_per_image'] * 1000:.0f} ms/image, "
              f"gate: {'; '.join(row.get('gate_refuses', ['-'])) or 'would promote'}",
              flush=True)
    return {"weights": weights, "aesthetic_reward_accuracy": aesthetic["heldout_accuracy"], "rows": rows,
            "grid": str(grid_path), "grid_rows": ["source (mask darkened)", *results], **timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/feedback_quality.json"))
    parser.add_argument("--labels", type=int, default=1000, help="best/worst labels the aesthetic reward learns from")
    parser.add_argument("--label-pool", choices=["renders", "generated", "both"], default="renders",
                        help="what the panel labels for the aesthetic reward: world renders of the quality mix, "
                             "the base generator's own samples (ByteEdit's data flow), or both")
    parser.add_argument("--generated-sets", type=int, default=320,
                        help="candidate sets (4 samples each) of the generator's own outputs to label")
    parser.add_argument("--reward-steps", type=int, default=400)
    parser.add_argument("--alignment-steps", type=int, default=300)
    parser.add_argument("--pefl-steps", type=int, default=150)
    parser.add_argument("--progressive-steps", type=int, default=80)
    parser.add_argument("--eval", type=int, default=96, help="held-out examples (a third each task)")
    parser.add_argument("--eval-seed", type=int, default=HELD_OUT,
                        help="seed of the held-out examples and their sampling noise (another value: a fresh set)")
    parser.add_argument("--task-reward-scale", action="append", default=[], metavar="TASK=SCALE",
                        help="also train PeFL with the reward loss scaled per task (repeatable, e.g. outpaint=4 "
                             "erase=0 inpaint=0); the progressive stage then starts from that model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reward-cache", type=Path, default=None,
                        help="keep the trained reward models here and reuse them on the next run")
    parser.add_argument("--calibrate", type=int, default=0, help="normalise rewards on this many clean sources")
    parser.add_argument("--reward-weight", type=float, default=None, help="weight of each reward's loss")
    parser.add_argument("--lr", type=float, default=None, help="feedback learning rate (default: the preset's)")
    parser.add_argument("--kl-weight", type=float, default=None,
                        help="DPOK's KL trust region to the start model in every fine-tune (default: off)")
    parser.add_argument("--skip-progressive", action="store_true")
    parser.add_argument("--progressive-from", choices=["pefl", "base"], default="pefl",
                        help="the model phase 2 starts from (default: the PeFL model, or the per-task one)")
    parser.add_argument("--progressive-spacing", choices=["leading", "trailing"], default=None,
                        help="timestep spacing the progressive stage trains and samples with (default: the model's)")
    parser.add_argument("--onpolicy-sets", type=int, default=0,
                        help="> 0: label this many sets of the PeFL model's own samples, retrain the reward with "
                             "them and run PeFL again (one on-policy round)")
    parser.add_argument("--onpolicy-rounds", type=int, default=1,
                        help="on-policy rounds with --onpolicy-sets: each labels the last round's PeFL model")
    parser.add_argument("--ablation", action="store_true", help="also train with the rewards off (regulariser only)")
    parser.add_argument("--reward-reads-source", action="store_true",
                        help="generated sets carry their source and mask; the aesthetic reward reads them")
    parser.add_argument("--tastes", nargs="+", default=["default", "reversed"], choices=["default", "reversed"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": "bench/feedback_quality.py " + " ".join(sys.argv[1:]), "torch_threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        alignment = train_alignment_reward(root, args.alignment_steps, args.reward_cache)
        report["alignment_reward_accuracy"] = alignment["heldout_accuracy"]
        generated = {}
        if args.label_pool != "renders":  # the base model's own samples, generated once for every taste
            keep = args.reward_cache or root
            generated = {"train": generated_pool(base_model_dir("inpaint"), args.generated_sets, 4, GENERATED,
                                                 20, keep),
                         "eval": generated_pool(base_model_dir("inpaint"), max(args.generated_sets // 5, 16), 4,
                                                GENERATED + 5000, 20, keep)}
        for tag in args.tastes:
            weights = dict(DEFAULT_WEIGHTS) if tag == "default" else reversed_weights()
            report[tag] = taste(root, tag, weights, args, alignment, generated)
            args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
