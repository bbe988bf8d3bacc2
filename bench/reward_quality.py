"""How well the reward models learn, measured on held-out data by the world (issue: reward models).

    .venv/bin/python bench/reward_quality.py --out bench/results/reward_quality.json

1. Aesthetic: a panel of simulated annotators (temperatures 0.25 / 0.5 / 1.0, one shared hidden
   utility) labels candidate sets of world renders at mixed quality (best/worst of 4), straight
   into a database; the model trains on 250 / 1k / 4k labels (same code path as a training run:
   preference rows -> pairs -> train_aesthetic) and is scored on a held-out panel-labelled set.
   Ceiling = the accuracy of the annotators' own utility on those held-out noisy pairs (no model
   can predict the noise). Then the same with the utility weights reversed.
2. Alignment: held-out accuracy against one-attribute hard negatives, per attribute.
3. Coherence: per-pixel ROC AUC on held-out inpainted composites made by the base inpainting model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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


def labelled_pool(root: Path, n_labels: int, seed: int, weights: dict[str, float]):  # noqa: ANN201
    url = f"sqlite:///{root / f'pool-{seed}.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    store = LocalBlobStore(root / "blobs")
    ids = render_candidate_sets(sessions, store, n_labels, 4, seed=seed)
    simulate_labels(sessions, store, ids, LabelPlan(panel(weights=weights, seed=seed)))
    return sessions, store


def all_pairs(sessions, store):  # noqa: ANN001, ANN201
    """Every labelled pair of a pool (the pool is either all training or all held-out data)."""
    with sessions() as s:
        split = preference_pairs(s, store, eval_fraction=0.5, min_labels=1)
    return split.train + split.eval


def utility_accuracy(pairs, cache: ImageCache, weights: dict[str, float]) -> float:  # noqa: ANN001
    memo: dict[tuple[str, str], float] = {}

    def u(key: str, prompt: str) -> float:
        if (key, prompt) not in memo:
            memo[(key, prompt)] = utility(cache.image(key), parse_caption(prompt), weights)
        return memo[(key, prompt)]

    hits = [1.0 if u(p.win, p.prompt) > u(p.lose, p.prompt) else 0.5 if u(p.win, p.prompt) == u(p.lose, p.prompt)
            else 0.0 for p in pairs]
    return float(np.mean(hits))


def aesthetic_curve(root: Path, sizes: list[int], weights: dict[str, float], tag: str, eval_labels: int,
                    steps_per_label: float, min_steps: int, stem: str = "conv") -> dict:
    eval_sessions, eval_store = labelled_pool(root / f"{tag}-eval", eval_labels, 5000, weights)
    eval_pairs = all_pairs(eval_sessions, eval_store)
    eval_cache = ImageCache(eval_store)
    ceiling = utility_accuracy(eval_pairs, eval_cache, weights)
    train_sessions, train_store = labelled_pool(root / f"{tag}-train", max(sizes), 1, weights)
    train_all = all_pairs(train_sessions, train_store)
    train_cache = ImageCache(train_store)
    by_set: dict[int, list] = {}
    for p in train_all:
        by_set.setdefault(p.set_id, []).append(p)
    set_order = sorted(by_set)
    points = []
    for n in sizes:
        train = [p for sid in set_order[:n] for p in by_set[sid]]
        steps = max(min_steps, int(steps_per_label * n))
        torch.manual_seed(0)
        model = tiny_reward("aesthetic", 0, stem)
        t0 = time.time()
        loop = LoopConfig(steps=steps, eval_every=max(50, steps // 8), patience=4, checkpoint_every=10**9)
        # early stopping watches the first 600 held-out pairs; the reported accuracy uses all of them
        best, result = train_aesthetic(model, build_tokenizer(), train, eval_pairs[:600],
                                       _Merged(train_cache, eval_cache), loop, Path(tempfile.mkdtemp()),
                                       batch_size=32)
        acc = pairwise_accuracy(best, build_tokenizer(), eval_pairs, eval_cache)
        points.append({"labels": n, "train_pairs": len(train), "steps": result.steps_done,
                       "best_step": result.best_step, "heldout_accuracy": acc, "ceiling": ceiling,
                       "fraction_of_ceiling": acc / ceiling, "seconds": round(time.time() - t0, 1)})
        print(f"  {tag} {n} labels: accuracy {acc:.3f} / ceiling {ceiling:.3f} = {acc / ceiling:.3f} "
              f"({result.steps_done} steps, {time.time() - t0:.0f}s)", flush=True)
    return {"eval_pairs": len(eval_pairs), "ceiling": ceiling, "points": points}


class _Merged(ImageCache):
    """Two stores' images (train and held-out pools live apart)."""

    def __init__(self, a: ImageCache, b: ImageCache) -> None:
        self.a, self.b = a, b

    def image(self, key: str) -> np.ndarray:
        return self.a.image(key) if self.a.store.exists(key) else self.b.image(key)


def alignment_bench(steps: int, n_train: int, n_eval: int) -> dict:
    from trainers.reward.alignment import accuracy_by_attribute, alignment_examples, train_alignment

    train, held_out = alignment_examples(n_train, 0), alignment_examples(n_eval, 10_000)
    tok = build_tokenizer()
    before = accuracy_by_attribute(tiny_reward("alignment", 0), tok, held_out)
    best, result = train_alignment(tiny_reward("alignment", 0), tok, train, held_out[: n_eval // 2],
                                   LoopConfig(steps=steps, eval_every=max(50, steps // 8), patience=4,
                                              checkpoint_every=10**9), Path(tempfile.mkdtemp()), batch_size=32)
    after = accuracy_by_attribute(best, tok, held_out)
    print(f"  alignment: {after}", flush=True)
    return {"untrained": before, "trained": after, "steps": result.steps_done, "train_examples": n_train}


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
    parser.add_argument("--steps-per-label", type=float, default=0.25)
    parser.add_argument("--min-steps", type=int, default=200)
    parser.add_argument("--alignment-steps", type=int, default=600)
    parser.add_argument("--coherence-steps", type=int, default=300)
    parser.add_argument("--stem", default="conv", choices=["conv", "patch"], help="reward image stem")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["aesthetic", "reversed", "alignment", "coherence"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"command": "bench/reward_quality.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                        vars(args).items() if k not in ("out",)),
                     "torch_threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "aesthetic" not in args.skip:
            print("aesthetic, default taste", flush=True)
            results["aesthetic"] = aesthetic_curve(root, args.sizes, dict(DEFAULT_WEIGHTS), "default",
                                                   args.eval_labels, args.steps_per_label, args.min_steps, args.stem)
            save(results, args.out)
        if "reversed" not in args.skip:
            print("aesthetic, reversed taste", flush=True)
            results["aesthetic_reversed"] = aesthetic_curve(root, args.sizes, reversed_weights(), "reversed",
                                                            args.eval_labels, args.steps_per_label, args.min_steps,
                                                            args.stem)
            save(results, args.out)
    if "alignment" not in args.skip:
        print("alignment", flush=True)
        results["alignment"] = alignment_bench(args.alignment_steps, 4000, 1000)
        save(results, args.out)
    if "coherence" not in args.skip:
        print("coherence", flush=True)
        results["coherence"] = coherence_bench(args.coherence_steps, 384, 128, 20)
    save(results, args.out)
    if "aesthetic" in results or "aesthetic_reversed" in results:
        plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


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
            ax.axhline(results[key]["ceiling"], ls="--", lw=1, color=ax.lines[-1].get_color(),
                       label=f"ceiling (annotators' utility), {label}")
    ax.set_xscale("log")
    ax.set_xlabel("best/worst labels")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_title("aesthetic reward: learning curve")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
