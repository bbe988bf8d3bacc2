"""Online GRPO for the instruction editor (issue 34): does scoring its own edits with the reward models make it edit
better, as the world judges it, and what does the coherence reward buy?

    .venv/bin/python bench/instruct_grpo.py --out bench/results/instruct_grpo.json    # ~30 minutes here, alone

Through the platform's own run (trainers/align/tuning.py, the run a worker does), in a fresh state: the alignment
reward (world captions) and the coherence reward (the base inpainting model's composites) are trained as
bench/method_compare.py trains them (kept in --cache) and promoted; GRPO runs of the committed instruction editor
(trainers/align/grpo.py: --group edits of each world instruction at its own 8 steps, scored in-process against the
caption the instruction asks for) train with the coherence reward at --coherence and with it off. No guard reward
is held out here (the only other reward, aesthetic, is the taste's and would need its labels): the world's judge on
held-out edits is the independent measure, and the gate is the alignment rounds'. Reported per run, against the
committed editor on the same held-out edits and seeds (--eval-per-kind per kind, seeds 770000+): judged success,
preservation, L1 outside the edit region, the alignment reward's mean score of the edits (the trained reward's own
view), each taste's panel GSB superiority vs base, the gate's verdict and CPU-minutes of training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from feedback_quality import train_alignment_reward  # noqa: E402
from instruct_dpo import TASTES  # noqa: E402
from method_compare import train_coherence_reward  # noqa: E402

from editloop.models.instruct import load_instruct_editor  # noqa: E402
from editloop.registry import fetch_model_dir, find_version, promote, register_candidate, store_model_dir  # noqa: E402
from editloop.settings import Settings  # noqa: E402
from editloop.state import open_state  # noqa: E402
from editloop.world.annotators import panel, utility  # noqa: E402
from editloop.world.render import render  # noqa: E402
from trainers.align.evaluate import evaluate_editor, held_out_edits  # noqa: E402
from trainers.align.grpo import score_edits  # noqa: E402
from trainers.align.tuning import run_instruct_tuning  # noqa: E402
from trainers.feedback.evaluate import panel_gsb  # noqa: E402
from trainers.feedback.reward_client import LocalScorer  # noqa: E402
from trainers.feedback.rewards import load_rewards  # noqa: E402


def promote_dir(sessions, store, kind: str, path: Path) -> None:
    with sessions.begin() as s:
        register_candidate(s, kind, kind, f"bench-{kind}", store_model_dir(store, path), {"eval_score": 1.0}, {}, None)
        promote(s, kind, f"bench-{kind}", force=True)


def judged(editor_dir: Path, edits, scorer, device: str = "cpu") -> dict:
    """World metrics, the alignment reward's mean score and each taste's utilities of the editor's held-out edits."""
    metrics, images = evaluate_editor(load_instruct_editor(editor_dir, device=device), edits)
    sources = np.stack([render(e.source) for e in edits])
    alignment = score_edits(scorer, ["alignment"], images, edits, sources)["alignment"]
    return {"metrics": {k: metrics[k] for k in ("success", "preservation", "l1_outside")},
            "alignment_score": float(np.mean(alignment)),
            "utility": {t: np.array([utility(im, e.target, w) for im, e in zip(images, edits)])
                        for t, w in TASTES.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/instruct_grpo.json")
    p.add_argument("--work", type=Path, default=ROOT / ".editloop/bench/instruct_grpo")
    p.add_argument("--cache", type=Path, default=ROOT / ".editloop/bench/feedback_cache")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--train-fraction", type=float, default=0.5)
    p.add_argument("--coherence", type=float, default=0.5, help="the coherence reward's weight (the other run: 0)")
    p.add_argument("--eval-per-kind", type=int, default=6)
    p.add_argument("--alignment-steps", type=int, default=200)
    p.add_argument("--coherence-train", type=int, default=256)
    p.add_argument("--coherence-steps", type=int, default=300)
    p.add_argument("--device", default="cpu", help="where the editor samples and trains (cpu, cuda)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--runs", default="grpo,grpo-no-coherence", help="which runs (coherence on, off), in order")
    args = p.parse_args()
    unknown = sorted({r.strip() for r in args.runs.split(",") if r.strip()} - {"grpo", "grpo-no-coherence"})
    if unknown:
        p.error(f"--runs: unknown {unknown[0]!r}; runs: grpo, grpo-no-coherence")
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="instruct-grpo-"))
    alignment = train_alignment_reward(root, args.alignment_steps, args.cache)
    coherence = train_coherence_reward(args.cache, args.coherence_train, args.coherence_steps)
    settings = Settings(state_dir=args.work / uuid.uuid4().hex[:8], device=args.device, broker_url="",
                        result_backend="")
    sessions, store = open_state(settings)
    promote_dir(sessions, store, "alignment", alignment["path"])
    promote_dir(sessions, store, "coherence", coherence)
    scorer = LocalScorer(load_rewards({"alignment": alignment["path"], "coherence": coherence}))
    edits = held_out_edits(args.eval_per_kind)
    base = judged(settings.instruct_model, edits, scorer, args.device)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "alignment_reward_accuracy":
              alignment["heldout_accuracy"], "base": "the committed instruction editor (editloop/weights/instruct)",
              "edits": len(edits), "rows": {"base": {**base["metrics"], "alignment_score": base["alignment_score"]}}}
    weights = {"grpo": args.coherence, "grpo-no-coherence": 0.0}
    for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        weight = weights[name]
        config = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "checkpoint_every": 20,
                  "eval_per_kind": args.eval_per_kind, "reward_weights": {"alignment": 1.0},
                  "grpo": {"group": args.group, "train_fraction": args.train_fraction, "coherence_weight": weight,
                           "guard": [], "scorer": "in-process"}}
        t0, w0 = time.process_time(), time.perf_counter()
        out = run_instruct_tuning("grpo", uuid.uuid4().hex, sessions, store, settings, config)
        cpu_min, wall_min = (time.process_time() - t0) / 60, (time.perf_counter() - w0) / 60
        with sessions() as s:
            row = find_version(s, "instruct", out["version"])
            version_dir = fetch_model_dir(store, row.checkpoint_key, settings.state_dir / "models")
        got = judged(version_dir, edits, scorer, args.device)
        gsb = {t: panel_gsb(got["utility"][t], base["utility"][t], panel(weights=w, seed=7))
               for t, w in TASTES.items()}
        report["rows"][name] = {**got["metrics"], "alignment_score": got["alignment_score"],
                                "superiority": {t: g.superiority for t, g in gsb.items()},
                                "gsb": {t: [g.good, g.same, g.bad] for t, g in gsb.items()},
                                "promoted": out["promoted"], "refused": out.get("refused"),
                                "cpu_minutes_run": cpu_min, "wall_minutes_run": wall_min, "device": args.device,
                                "coherence_weight": weight}
        print(f"{name}: success {got['metrics']['success']:.3f} (base {base['metrics']['success']:.3f}), "
              f"preservation {got['metrics']['preservation']:.3f} (base {base['metrics']['preservation']:.3f}), "
              f"alignment score {got['alignment_score']:.3f} (base {base['alignment_score']:.3f}), superiority "
              f"{', '.join(f'{t} {g.superiority:.3f}' for t, g in gsb.items())}; promoted {out['promoted']}; "
              f"{cpu_min:.1f} CPU-min, {wall_min:.1f} min wall on {args.device}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float))
    print("| model | success | preservation | L1 outside | alignment score | superiority default / reversed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, r in report["rows"].items():
        sup = r.get("superiority", {})
        print(f"| {model} | {r['success']:.3f} | {r['preservation']:.3f} | {r['l1_outside']:.4f} | "
              f"{r['alignment_score']:.3f} | {sup.get('default', 1.0):.3f} / {sup.get('reversed', 1.0):.3f} |")


if __name__ == "__main__":
    main()
