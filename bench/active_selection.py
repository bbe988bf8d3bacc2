"""Labels needed by the aesthetic reward to reach 0.9 of the annotators' ceiling: active selection vs random.

    .venv/bin/python bench/active_selection.py --work .editloop/bench/active_pools \
        --out bench/results/active_selection.json

The same pools and recipe as bench/reward_quality.py: a panel of three simulated annotators (temperatures
0.25 / 0.5 / 1.0, one hidden utility, default or reversed taste) labels candidate sets of 4 world renders at mixed
quality; validation pool (200 labels) picks the checkpoint, held-out test pool (400 labels) gives the accuracy and
the ceiling (the annotators' own utility on those noisy pairs). The training pool (2000 sets) is labelled once, up
front, so both methods see exactly the same answer for a set; a method only chooses which sets' labels it gets.

Both start from the same `--start` sets (a seeded draw). Each round trains the reward from scratch on the sets
chosen so far (0.5 steps per label, 200 at least, cosine, batch 32), measures held-out accuracy, and stops once it
reaches `--target` x ceiling; otherwise it adds `--batch` sets:
- random: a seeded draw from the sets not yet chosen;
- active: the highest priorities (trainers.label_selection.set_priorities: the current reward's pairwise
  uncertainty within the set and the set's pixel diversity, ranks averaged) among `--candidates` sets drawn
  from those not yet chosen; exactly what the loop's label-sets batches do with the promoted reward.
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
from sqlalchemy import select
from sqlalchemy.orm import selectinload

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_quality import Recipe, _Merged, pool_pairs, utility_accuracy

from editloop.db.models import CandidateSet
from editloop.models.reward import tiny_reward
from editloop.models.tokenizer import build_tokenizer
from editloop.world.annotators import DEFAULT_WEIGHTS, reversed_weights
from trainers.feedback.rewards import RewardModels
from trainers.label_selection import set_priorities
from trainers.reward.aesthetic import pairwise_accuracy, train_aesthetic


def set_images(root: Path, n: int, seed: int, weights: dict[str, float]) -> dict[int, tuple[str, list[str]]]:
    """set id -> (prompt, image keys) of a labelled pool."""
    from reward_quality import labelled_pool

    sessions, _ = labelled_pool(root, n, seed, weights)
    with sessions() as s:
        rows = s.scalars(select(CandidateSet).options(selectinload(CandidateSet.items))).all()
        return {cs.id: (cs.prompt.text, [i.image.blob_key for i in sorted(cs.items, key=lambda i: i.position)])
                for cs in rows}


def train(pairs: list, val_pairs: list, images, recipe: Recipe, n_labels: int):
    torch.manual_seed(0)
    model = tiny_reward("aesthetic", 0, recipe.stem)
    best, result = train_aesthetic(model, build_tokenizer(), pairs, val_pairs, images, recipe.loop(n_labels),
                                   Path(tempfile.mkdtemp()), batch_size=recipe.batch_size)
    return best, result


def choose_next(method: str, model, pool: dict, chosen: list[int], cache, batch: int, candidates: int,
                rng: np.random.Generator) -> list[int]:
    left = [i for i in sorted(pool) if i not in set(chosen)]
    if method == "random":
        return [int(i) for i in rng.choice(left, size=min(batch, len(left)), replace=False)]
    offered = [int(i) for i in rng.choice(left, size=min(candidates, len(left)), replace=False)]
    sets = [np.stack([cache.image(k) for k in pool[i][1]]) for i in offered]
    rewards = RewardModels(preference={"aesthetic": (model.eval(), build_tokenizer())})
    prios = set_priorities(sets, [pool[i][0] for i in offered], rewards)
    order = sorted(range(len(offered)), key=lambda k: -prios[k]["priority"])
    return [offered[k] for k in order[:batch]]


def curve(method: str, tag: str, args: argparse.Namespace, weights: dict[str, float], recipe: Recipe) -> dict:
    root = args.work
    test_pairs, test_cache = pool_pairs(root / f"{tag}-eval", 400, 5000, weights)
    val_pairs, val_cache = pool_pairs(root / f"{tag}-val", 200, 7000, weights)
    train_all, train_cache = pool_pairs(root / f"{tag}-train", args.pool, 1, weights)
    pool = set_images(root / f"{tag}-train", args.pool, 1, weights)
    ceiling = utility_accuracy(test_pairs, test_cache, weights)
    images = _Merged(train_cache, val_cache, test_cache)
    by_set: dict[int, list] = {}
    for p in train_all:
        by_set.setdefault(p.set_id, []).append(p)
    start_rng = np.random.default_rng(args.seed)
    chosen = [int(i) for i in start_rng.choice(sorted(pool), size=args.start, replace=False)]
    rng = np.random.default_rng(args.seed + 1)
    points, reached = [], None
    while True:
        t0 = time.time()
        pairs = [p for sid in chosen for p in by_set.get(sid, [])]
        best, result = train(pairs, val_pairs, images, recipe, len(chosen))
        acc = pairwise_accuracy(best, build_tokenizer(), test_pairs, test_cache)
        points.append({"labels": len(chosen), "heldout_accuracy": round(acc, 4),
                       "fraction_of_ceiling": round(acc / ceiling, 4), "steps": result.steps_done,
                       "seconds": round(time.time() - t0, 1)})
        print(f"  {tag} {method}: {len(chosen)} labels, accuracy {acc:.3f} = {acc / ceiling:.3f} of the ceiling "
              f"{ceiling:.3f} ({time.time() - t0:.0f}s)", flush=True)
        if acc >= args.target * ceiling:
            reached = len(chosen)
            break
        if len(chosen) >= args.max_labels:
            break
        chosen += choose_next(method, best, pool, chosen, train_cache, args.batch, args.candidates, rng)
    return {"ceiling": round(ceiling, 4), "target": round(args.target * ceiling, 4), "labels_to_target": reached,
            "points": points}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(".editloop/bench/active_pools"))
    p.add_argument("--out", type=Path, default=Path("bench/results/active_selection.json"))
    p.add_argument("--pool", type=int, default=2000, help="training pool: sets labelled up front")
    p.add_argument("--start", type=int, default=150, help="sets both methods start from (a seeded draw)")
    p.add_argument("--batch", type=int, default=150, help="sets added per round")
    p.add_argument("--candidates", type=int, default=600, help="active: sets scored per round")
    p.add_argument("--max-labels", type=int, default=900)
    p.add_argument("--target", type=float, default=0.9, help="fraction of the ceiling to reach")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tastes", nargs="+", default=["default", "reversed"], choices=["default", "reversed"])
    args = p.parse_args()
    recipe = Recipe()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}  # other tastes' curves are kept
    results.update({"args": {k: str(v) for k, v in vars(args).items()}, "recipe": recipe.__dict__})
    for taste in args.tastes:
        weights = DEFAULT_WEIGHTS if taste == "default" else reversed_weights()
        results[taste] = {m: curve(m, taste, args, weights, recipe) for m in ("random", "active")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    for taste in args.tastes:
        r = results[taste]
        print(f"{taste}: labels to {args.target} of the ceiling: random {r['random']['labels_to_target']}, "
              f"active {r['active']['labels_to_target']}")


if __name__ == "__main__":
    main()
