"""What do the loop's labels say? Each label's best-minus-worst utility, split into the panel's features.

    .venv/bin/python bench/experiments/label_features.py --state .editloop/bench/loop_turn \
        --out bench/results/label_features.json      # a minute or two per 1000 labels here

The loop's aesthetic reward learns from labels on the base editor's own edits far more slowly than from labels on
world renders of mixed quality (BENCHMARKS.md, "A turn of the loop with nobody typing"). The panel's utility
(WORLD.md, editloop/world/annotators.py) is a weighted sum of features: four image qualities (sharpness, clean,
color, centring), whose weights the reversed taste flips, and faithfulness (the edit's attribute accuracy against
the scene its prompt asks for, weight 3, kept by both tastes). On renders every image is faithful, so only the
qualities tell a set's images apart; on an editor's edits they need not be. For every valid label of a state
directory (a loop run's database and blobs), this computes each feature's share of u(best) - u(worst) and how often
that feature alone orders the label's best above its worst (ties half): what a reward must read to learn the labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import selectinload  # noqa: E402

from editloop.db import CandidateSet, Preference, make_engine, make_sessionmaker  # noqa: E402
from editloop.settings import Settings  # noqa: E402
from editloop.store import open_store  # noqa: E402
from editloop.world.annotators import DEFAULT_WEIGHTS, FEATURES, features, intended_scene, reversed_weights  # noqa: E402
from editloop.world.io import from_png  # noqa: E402


def label_features(state: Path) -> tuple[np.ndarray, list[str]]:
    """(labels x features) of features(best) - features(worst), and each label's set kind."""
    settings = Settings(state_dir=state, device="cpu", broker_url="", result_backend="")
    sessions, store = make_sessionmaker(make_engine(settings.resolved_database_url())), open_store(settings)
    diffs, kinds, memo = [], [], {}
    with sessions() as s:
        labels = s.scalars(select(Preference).where(Preference.status == "valid")).all()
        sets = {cs.id: cs for cs in s.scalars(select(CandidateSet).options(
            selectinload(CandidateSet.items), selectinload(CandidateSet.prompt)).where(
            CandidateSet.id.in_({p.candidate_set_id for p in labels})))}
        keys = {item.image_id: item.image.blob_key for cs in sets.values() for item in cs.items}
        def feat(cs: CandidateSet, image_id: int) -> np.ndarray:
            if (image_id, cs.id) not in memo:
                memo[(image_id, cs.id)] = features(from_png(store.get(keys[image_id])), intended_scene(cs.prompt.text))
            return memo[(image_id, cs.id)]

        for p in labels:
            cs = sets[p.candidate_set_id]
            diffs.append(feat(cs, p.best_image_id) - feat(cs, p.worst_image_id))
            kinds.append(cs.kind)
    return np.array(diffs), kinds


def summary(diffs: np.ndarray, weights: dict[str, float]) -> dict:
    """Per feature: its weighted share of the labels' |u(best) - u(worst)|, and how often it alone agrees with them."""
    w = np.array([weights[k] for k in FEATURES])
    contrib = diffs * w
    total = np.abs(contrib).sum(axis=1, keepdims=True)
    share = np.divide(np.abs(contrib), total, out=np.zeros_like(contrib), where=total > 0).mean(axis=0)
    agree = ((contrib > 0) + 0.5 * (contrib == 0)).mean(axis=0)
    quality = contrib[:, :4].sum(axis=1)
    return {"labels": len(diffs),
            "best_above_worst": float(((contrib.sum(axis=1) > 0) + 0.5 * (contrib.sum(axis=1) == 0)).mean()),
            "by_feature": {k: {"share": round(float(share[i]), 3), "agrees": round(float(agree[i]), 3),
                               "tied": round(float((contrib[:, i] == 0).mean()), 3)} for i, k in enumerate(FEATURES)},
            "qualities_alone_agree": float(((quality > 0) + 0.5 * (quality == 0)).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", type=Path, required=True, help="a loop run's state directory")
    p.add_argument("--taste", choices=["default", "reversed"], default="reversed", help="the panel's taste")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    diffs, kinds = label_features(args.state)
    weights = reversed_weights() if args.taste == "reversed" else dict(DEFAULT_WEIGHTS)
    result = {"state": str(args.state), "taste": args.taste, "all": summary(diffs, weights),
              "by_kind": {k: summary(diffs[np.array(kinds) == k], weights) for k in sorted(set(kinds))}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
