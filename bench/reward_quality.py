"""How well the reward models learn, measured on held-out data by the world (issue: reward models).

    .venv/bin/python bench/reward_quality.py --out bench/results/reward_quality.json

1. Aesthetic: a panel of simulated annotators (temperatures 0.25 / 0.5 / 1.0, one shared hidden
   utility) labels candidate sets of world renders at mixed quality (best/worst of 4), straight
   into a database; the model trains on 250 / 1k / 4k labels (same code path as a training run:
   preference rows -> pairs -> train_aesthetic with a cosine schedule); a separate
   validation pool picks the checkpoint and the accuracy is reported on a held-out test pool that
   nothing was selected on. Ceiling = the accuracy of the annotators' own utility on those held-out
   noisy pairs (no model can predict the noise). Then the same with the utility weights reversed.
2. Alignment: held-out accuracy against one-attribute hard negatives, per attribute.
3. Coherence: per-pixel ROC AUC on held-out inpainted composites made by the base inpainting model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import sessionmaker

from editloop.db import make_engine, make_sessionmaker, upgrade
from editloop.labels.simulated import LabelPlan, render_candidate_sets, simulate_labels
from editloop.models.reward import tiny_reward
from editloop.models.tokenizer import build_tokenizer
from editloop.store.local import LocalBlobStore
from editloop.world.annotators import DEFAULT_WEIGHTS, panel, reversed_weights, utility
from editloop.world.scene import parse_caption
from trainers.reward.aesthetic import pairwise_accuracy, train_aesthetic
from trainers.reward.data import ImageCache, preference_pairs
from trainers.reward.loop import LoopConfig


def labelled_pool(root: Path, n_labels: int, seed: int, weights: dict[str, float],
                  make_sets: Callable[[sessionmaker, LocalBlobStore], list[int]] | None = None):
    """A labelled pool; kept under `root` (with --work) and reused when a finished one is there. Its candidate sets
    are `n_labels` sets of world renders unless `make_sets(sessions, store)` writes others."""
    url = f"sqlite:///{root / f'pool-{seed}.db'}"
    done = root / f"pool-{seed}-{n_labels}.done"
    if not done.is_file():
        root.mkdir(parents=True, exist_ok=True)
        (root / f"pool-{seed}.db").unlink(missing_ok=True)
        upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    store = LocalBlobStore(root / "blobs")
    if not done.is_file():
        ids = (make_sets(sessions, store) if make_sets is not None
               else render_candidate_sets(sessions, store, n_labels, 4, seed=seed))
        simulate_labels(sessions, store, ids, LabelPlan(panel(weights=weights, seed=seed)))
        done.touch()
    return sessions, store


def all_pairs(sessions, store):
    """Every labelled pair of a pool (the pool is either all training or all held-out data)."""
    with sessions() as s:
        split = preference_pairs(s, store, eval_fraction=0.5, min_labels=1)
    return split.train + split.eval


def utility_accuracy(pairs, cache: ImageCache, weights: dict[str, float]) -> float:
    memo: dict[tuple[str, str], float] = {}

    def u(key: str, prompt: str) -> float:
        if (key, prompt) not in memo:
            memo[(key, prompt)] = utility(cache.image(key), parse_caption(prompt), weights)
        return memo[(key, prompt)]

    hits = [1.0 if u(p.win, p.prompt) > u(p.lose, p.prompt) else 0.5 if u(p.win, p.prompt) == u(p.lose, p.prompt)
            else 0.0 for p in pairs]
    return float(np.mean(hits))


@dataclass(frozen=True)
class Recipe:
    """How the aesthetic model trains at each pool size: max(min_steps, steps_per_label x labels) steps."""

    steps_per_label: float = 0.5
    min_steps: int = 200
    lr: float = 3e-4
    schedule: str = "cosine"
    warmup: int = 100
    batch_size: int = 32
    stem: str | None = None  # None: DEFAULT_STEMS["aesthetic"]
    mirror: bool = False  # trainers.reward.data.mirror_half (RewardTrainConfig.mirror)

    def loop(self, n_labels: int) -> LoopConfig:
        steps = max(self.min_steps, int(self.steps_per_label * n_labels))
        return LoopConfig(steps=steps, lr=self.lr, schedule=self.schedule, warmup=self.warmup,
                          eval_every=max(50, steps // 8), patience=100, checkpoint_every=10**9)


def aesthetic_curve(root: Path, sizes: list[int], weights: dict[str, float], tag: str, eval_labels: int,
                    recipe: Recipe) -> dict:
    """Three pools labelled by the same panel, seeds apart: training (nested prefixes of `sizes`), validation
    (picks the checkpoint) and held-out test (the reported accuracy and the ceiling; never seen in training)."""
    test_pairs, test_cache = pool_pairs(root / f"{tag}-eval", eval_labels, 5000, weights)
    val_pairs, val_cache = pool_pairs(root / f"{tag}-val", max(eval_labels // 2, 1), 7000, weights)
    train_all, train_cache = pool_pairs(root / f"{tag}-train", max(sizes), 1, weights)
    ceiling = utility_accuracy(test_pairs, test_cache, weights)
    images = _Merged(train_cache, val_cache, test_cache)
    by_set: dict[int, list] = {}
    for p in train_all:
        by_set.setdefault(p.set_id, []).append(p)
    set_order = sorted(by_set)
    points = []
    for n in sizes:
        train = [p for sid in set_order[:n] for p in by_set[sid]]
        torch.manual_seed(0)
        model = tiny_reward("aesthetic", 0, recipe.stem)
        t0 = time.time()
        best, result = train_aesthetic(model, build_tokenizer(), train, val_pairs, images, recipe.loop(n),
                                       Path(tempfile.mkdtemp()), batch_size=recipe.batch_size,
                                       mirror=recipe.mirror)
        acc = pairwise_accuracy(best, build_tokenizer(), test_pairs, test_cache)
        points.append({"labels": n, "train_pairs": len(train), "steps": result.steps_done,
                       "best_step": result.best_step, "validation_accuracy": result.best_score,
                       "heldout_accuracy": acc, "ceiling": ceiling, "fraction_of_ceiling": acc / ceiling,
                       "seconds": round(time.time() - t0, 1)})
        print(f"  {tag} {n} labels: accuracy {acc:.3f} / ceiling {ceiling:.3f} = {acc / ceiling:.3f} "
              f"({result.steps_done} steps, best {result.best_step}, {time.time() - t0:.0f}s)", flush=True)
    return {"eval_pairs": len(test_pairs), "validation_pairs": len(val_pairs), "ceiling": ceiling,
            "recipe": asdict(recipe), "points": points}


def pool_pairs(root: Path, n_labels: int, seed: int, weights: dict[str, float],
               make_sets: Callable[[sessionmaker, LocalBlobStore], list[int]] | None = None) -> tuple[list, ImageCache]:
    sessions, store = labelled_pool(root, n_labels, seed, weights, make_sets)
    return all_pairs(sessions, store), ImageCache(store)


class _Merged(ImageCache):
    """Several stores' images (the pools live apart)."""

    def __init__(self, *caches: ImageCache) -> None:
        self.caches = [leaf for c in caches for leaf in (c.caches if isinstance(c, _Merged) else [c])]
        self._holder: dict[str, ImageCache] = {}  # key -> the cache whose store has it, asked once per key

    def holder(self, key: str) -> ImageCache:
        if key not in self._holder:
            self._holder[key] = next((c for c in self.caches[:-1] if c.store.exists(key)), self.caches[-1])
        return self._holder[key]

    def image(self, key: str) -> np.ndarray:
        return self.holder(key).image(key)

    def mask(self, key: str) -> np.ndarray:
        return self.holder(key).mask(key)


def alignment_bench(steps: int, n_train: int, n_eval: int, stem: str | None = None) -> dict:
    from trainers.reward.alignment import accuracy_by_attribute, alignment_examples, train_alignment

    train, held_out = alignment_examples(n_train, 0), alignment_examples(n_eval, 10_000)
    tok = build_tokenizer()
    before = accuracy_by_attribute(tiny_reward("alignment", 0, stem), tok, held_out)
    best, result = train_alignment(tiny_reward("alignment", 0, stem), tok, train, held_out[: n_eval // 2],
                                   LoopConfig(steps=steps, eval_every=max(50, steps // 8), patience=4,
                                              checkpoint_every=10**9), Path(tempfile.mkdtemp()), batch_size=32)
    after = accuracy_by_attribute(best, tok, held_out)
    print(f"  alignment: {after}", flush=True)
    return {"untrained": before, "trained": after, "steps": result.steps_done, "train_examples": n_train,
            "stem": best.config.stem}


def coherence_bench(steps: int, n_train: int, n_eval: int, sampling_steps: int) -> dict:
    from editloop.models.base import load_base
    from trainers.reward.coherence import coherence_examples, pixel_auc, train_coherence

    pipe = load_base("inpaint")
    t0 = time.time()
    train = coherence_examples(pipe, n_train, 0, sampling_steps)
    held_out = coherence_examples(pipe, n_eval, 10_000, sampling_steps)
    made = time.time() - t0
    from editloop.models.reward import CoherenceReward

    torch.manual_seed(0)
    untrained = pixel_auc(CoherenceReward(), held_out)
    best, result = train_coherence(CoherenceReward(), train, held_out[: n_eval // 2],
                                   LoopConfig(steps=steps, eval_every=max(50, steps // 8), patience=4,
                                              checkpoint_every=10**9), Path(tempfile.mkdtemp()))
    auc = pixel_auc(best, held_out)
    print(f"  coherence: pixel AUC {auc:.3f} (untrained {untrained:.3f})", flush=True)
    return {"pixel_auc": auc, "untrained_pixel_auc": untrained, "steps": result.steps_done,
            "train_examples": n_train, "eval_examples": n_eval, "seconds_making_examples": round(made, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/reward_quality.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--eval-labels", type=int, default=400)
    parser.add_argument("--steps-per-label", type=float, default=Recipe.steps_per_label)
    parser.add_argument("--min-steps", type=int, default=Recipe.min_steps)
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--schedule", default=Recipe.schedule, choices=["constant", "cosine"])
    parser.add_argument("--warmup", type=int, default=Recipe.warmup)
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--mirror", action="store_true", help="mirror half of each training batch")
    parser.add_argument("--alignment-steps", type=int, default=600)
    parser.add_argument("--coherence-steps", type=int, default=300)
    parser.add_argument("--stem", default=None, choices=["conv", "patch"],
                        help="image stem of the aesthetic and alignment models (default: each kind's DEFAULT_STEMS)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the labelled pools here and reuse them on the next run (default: a temp dir)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["aesthetic", "reversed", "alignment", "coherence"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = Recipe(args.steps_per_label, args.min_steps, args.lr, args.schedule, args.warmup, args.batch_size,
                    args.stem, args.mirror)
    results: dict = {"command": "bench/reward_quality.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                        vars(args).items() if k not in ("out", "work")),
                     "torch_threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        if "aesthetic" not in args.skip:
            print("aesthetic, default taste", flush=True)
            results["aesthetic"] = aesthetic_curve(root, args.sizes, dict(DEFAULT_WEIGHTS), "default",
                                                   args.eval_labels, recipe)
            save(results, args.out)
        if "reversed" not in args.skip:
            print("aesthetic, reversed taste", flush=True)
            results["aesthetic_reversed"] = aesthetic_curve(root, args.sizes, reversed_weights(), "reversed",
                                                            args.eval_labels, recipe)
            save(results, args.out)
    if "alignment" not in args.skip:
        print("alignment", flush=True)
        results["alignment"] = alignment_bench(args.alignment_steps, 4000, 1000, args.stem)
        save(results, args.out)
    if "coherence" not in args.skip:
        print("coherence", flush=True)
        results["coherence"] = coherence_bench(args.coherence_steps, 384, 128, 20)
    save(results, args.out)
    print(f"wrote {args.out}")
    if "aesthetic" in results or "aesthetic_reversed" in results:
        plot(results, args.out.with_suffix(".png"))
        print(f"wrote {args.out.with_suffix('.png')}")


def save(results: dict, out: Path) -> None:
    """Written after every section, so a crash late in the run keeps what was measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("aesthetic", "default taste"), ("aesthetic_reversed", "reversed taste")):
        if key in results:
            pts = results[key]["points"]
            ax.plot([p["labels"] for p in pts], [p["heldout_accuracy"] for p in pts], "o-", label=f"model, {label}")
            color = ax.lines[-1].get_color()
            ax.axhline(results[key]["ceiling"], ls="--", lw=1, color=color,
                       label=f"ceiling (annotators' utility), {label}")
            ax.axhline(0.95 * results[key]["ceiling"], ls=":", lw=1, color=color, label=f"goal 0.95 x ceiling, {label}")
    ax.set_xscale("log")
    sizes = sorted({p["labels"] for key in ("aesthetic", "aesthetic_reversed") for p in results.get(key, {}).get(
        "points", [])})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("best/worst labels")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_title("aesthetic reward: learning curve")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
