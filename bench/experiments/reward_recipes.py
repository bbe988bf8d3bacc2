"""Which aesthetic-reward recipe learns the loop's labels soonest? Trained offline on a loop run's own labels.

    .venv/bin/python bench/experiments/reward_recipes.py --state .editloop/bench/loop_turn \
        --out bench/results/reward_recipes.json     # ~5 minutes per recipe and label count here

The loop's reward runs (trainers/reward/run.py) on the base editor's edits stay near chance for hundreds of labels
(BENCHMARKS.md, "A turn of the loop with nobody typing"). This trains the tiny aesthetic reward from scratch on the
valid labels of a loop run's state directory (its database and blobs), split as the platform splits them
(trainers/reward/data.split_of: 15% of the candidate sets held out for the score and the chance floor, 10% to choose
the checkpoint, the rest to train), with each recipe of --recipes on the oldest --labels of the training side, and
reports the held-out pairwise accuracy and the floor's sign test over held-out sets, as the platform's gate would.
Recipes: "platform" (RewardTrainConfig's defaults: 1500 steps, batch 64, AdamW 3e-4, cosine, patience 5);
"per-label" (the reward-quality bench's recipe: 0.5 steps per label, at least 200, batch 32); "image-only" (the
platform's, without the source and mask channels); "decay" (the platform's with weight decay 0.1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from editloop.db import make_engine, make_sessionmaker  # noqa: E402
from editloop.models.reward import tiny_reward  # noqa: E402
from editloop.models.tokenizer import build_tokenizer  # noqa: E402
from editloop.settings import Settings  # noqa: E402
from editloop.store import open_store  # noqa: E402
from trainers.reward.aesthetic import pairwise_accuracy, train_aesthetic  # noqa: E402
from trainers.reward.data import ImageCache, Pair, preference_pairs  # noqa: E402
from trainers.reward.loop import LoopConfig  # noqa: E402
from trainers.reward.run import RewardTrainConfig, chance_floor  # noqa: E402

RECIPES = ("platform", "per-label", "image-only", "decay")


def recipe(name: str, labels: int) -> tuple[dict, int, bool]:
    """(LoopConfig overrides, batch size, reads source) of a recipe for this many training labels."""
    base = RewardTrainConfig().loop()
    if name == "per-label":
        return {**dataclasses.asdict(base), "steps": max(200, labels // 2),
                "eval_every": max(25, max(200, labels // 2) // 8)}, 32, True
    overrides = dataclasses.asdict(base)
    if name == "decay":
        overrides["weight_decay"] = 0.1
    return overrides, RewardTrainConfig().batch_size, name != "image-only"


def oldest_labels(pairs: list[Pair], n: int) -> list[Pair]:
    """The pairs of the first `n` training sets (set ids grow with time: the labels a run at n labels saw)."""
    keep = set(sorted({p.set_id for p in pairs})[:n])
    return [p for p in pairs if p.set_id in keep]


def image_only(pairs: list[Pair]) -> list[Pair]:
    return [dataclasses.replace(p, source=None, mask=None) for p in pairs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", type=Path, required=True, help="a loop run's state directory")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    p.add_argument("--labels", type=int, nargs="+", default=[0], help="training sets used (0: all)")
    p.add_argument("--max-steps", type=int, default=0, help="cap every recipe's steps (a smoke run)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    settings = Settings(state_dir=args.state, device="cpu", broker_url="", result_backend="")
    sessions, store = make_sessionmaker(make_engine(settings.resolved_database_url())), open_store(settings)
    with sessions() as s:
        split = preference_pairs(s, store, select_fraction=RewardTrainConfig().select_fraction)
    cache, tokenizer = ImageCache(store), build_tokenizer()
    sets = len({q.set_id for q in split.train})
    result = {"state": str(args.state), "train_sets": sets, "select_sets": len({q.set_id for q in split.select}),
              "eval_sets": len({q.set_id for q in split.eval}), "runs": []}
    for n in args.labels:
        train = oldest_labels(split.train, n) if n else split.train
        used = len({q.set_id for q in train})
        for name in args.recipes:
            overrides, batch, reads_source = recipe(name, used)
            if args.max_steps:
                overrides.update(steps=min(overrides["steps"], args.max_steps),
                                 eval_every=min(overrides["eval_every"], args.max_steps))
            strip = (lambda x: x) if reads_source else image_only
            started = time.monotonic()
            best, loop = train_aesthetic(tiny_reward("aesthetic", 0), tokenizer, strip(train), strip(split.select),
                                         cache, LoopConfig(**overrides), Path(tempfile.mkdtemp()), batch_size=batch)
            acc = pairwise_accuracy(best, tokenizer, strip(split.eval), cache)
            floor = chance_floor("aesthetic", acc, {"eval": split.eval}, best)  # the platform's own floor
            row = {"recipe": name, "train_sets": used, "held_out_accuracy": round(acc, 4),
                   "floor": {"wins": floor["wins"], "units": floor["units"], "p_value": round(floor["p_value"], 4)},
                   "best_step": loop.best_step, "steps_done": loop.steps_done,
                   "seconds": round(time.monotonic() - started, 1)}
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
