"""How much do a round's pairs change outside the edit region? The weak generator's against an editor's own (issue 7)

    .venv/bin/python bench/pair_outside_l1.py --editor editloop/weights/instruct --pairs 96

Both make pairs for the same edit specs (a later round's, seeded by --round) from the same degraded sources; each
set is filtered as the rounds filter the editor's own pairs (judge agreement --min-agreement, round 1's direction
and similarity tests), and the mean L1 outside the edit region is reported for all pairs and for the kept ones,
with the quartiles and how many kept pairs fall under a few thresholds (bench/edit_quality.py
--later-max-outside-l1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from editloop.models.instruct import load_instruct_editor
from trainers.align.filters import FilterConfig, JudgeScorer, filter_pairs, region_l1
from trainers.align.round_config import METHODS, RoundConfig, round_pairs

THRESHOLDS = (0.01, 0.015, 0.02, 0.03)


def outside_l1_summary(pairs, keep: np.ndarray) -> dict:  # trainers.align.pairs.Pairs
    _, out = region_l1(pairs.sources, pairs.targets, pairs.masks)
    kept = out[keep & np.isfinite(out)]
    return {"made": len(pairs), "kept": int(keep.sum()), "mean_all": float(np.nanmean(out)),
            "mean_kept": float(kept.mean()) if len(kept) else float("nan"),
            "kept_quartiles": np.percentile(kept, [25, 50, 75]).tolist() if len(kept) else [],
            "kept_at_most": {str(t): int((kept <= t).sum()) for t in THRESHOLDS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--editor", type=Path, default=Path("editloop/weights/instruct"))
    ap.add_argument("--pairs", type=int, default=96, help="edit specs")
    ap.add_argument("--round", type=int, default=2, help="whose specs and seeds (a later round's)")
    ap.add_argument("--min-agreement", type=float, default=1.0)
    ap.add_argument("--method", choices=METHODS, default="inpaint", help="the weak generator's")
    ap.add_argument("--blend-until", type=float, default=1.0, help="--method blend: RoundConfig.blend_until")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = RoundConfig(pairs=args.pairs, pair_steps=12, method=args.method, blend_until=args.blend_until)
    result = {"args": {k: str(v) for k, v in vars(args).items()}}
    for name, editor in (("weak generator", None), ("editor", load_instruct_editor(args.editor))):
        pairs = round_pairs(args.round, cfg, editor, None)
        keep, _ = filter_pairs(pairs, JudgeScorer(), FilterConfig(min_agreement=args.min_agreement))
        result[name] = outside_l1_summary(pairs, keep)
        print(name, json.dumps(result[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
