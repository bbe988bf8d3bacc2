"""Diffusion-DPO for the instruction editor on the panel's labels of its own edits (issue 34): does it get better?

    .venv/bin/python bench/instruct_dpo.py --out bench/results/instruct_dpo.json     # ~25 minutes here, alone

Through the platform's own code, in a fresh state per taste (SQLite, local blobs; --work keeps the made sets, so
a rerun only labels and trains again): the committed instruction editor makes --sets instruction-edit sets of 4
(world edits of the seven kinds from seed 500000, --sample-steps steps; trainers/edit_sets.py, candidates.py);
the taste's simulated panel labels each once (its three annotators in turn; each judges an edit against the
source's scene with the instruction done to it); a DPO run of the instruction editor (trainers/align/dpo.py, the
run a worker would do) trains from the committed editor and is gated on the alignment rounds' held-out edits
(--eval-per-kind per kind, seeds 770000+). Reported per taste: the run's judged success, preservation and L1
outside the edit region, base vs DPO (the same held-out edits and seeds), the panel's GSB superiority of DPO vs
base on those edits (every annotator judges every pair), the implicit accuracy at the end, and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from editloop.labels.simulated import LabelPlan, simulate_labels  # noqa: E402
from editloop.models.instruct import load_instruct_editor  # noqa: E402
from editloop.settings import Settings  # noqa: E402
from editloop.state import open_state  # noqa: E402
from editloop.world.annotators import DEFAULT_WEIGHTS, panel, reversed_weights, utility  # noqa: E402
from trainers import candidates  # noqa: E402
from trainers.align.dpo import instruct_labels  # noqa: E402
from trainers.align.evaluate import evaluate_editor, held_out_edits  # noqa: E402
from trainers.align.tuning import run_instruct_dpo  # noqa: E402
from trainers.edit_sets import EditSetsRequest, edit_set_specs  # noqa: E402
from trainers.feedback.evaluate import panel_gsb  # noqa: E402

TASTES = {"default": DEFAULT_WEIGHTS, "reversed": reversed_weights()}


def made_sets(settings: Settings, sessions, store, n: int, steps: int) -> list[int]:
    """The committed editor's sets (idempotent: a rerun finds them)."""
    specs = edit_set_specs(EditSetsRequest(editor="base", sets=n, images=4, steps=steps, instruct=True), "base", store)
    ids, t0 = [], time.time()
    for i, spec in enumerate(specs):
        with sessions.begin() as s:
            ids.append(candidates.run(candidates.CandidateSpec(**spec), s, store, settings))
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{n} sets ({time.time() - t0:.0f}s)", flush=True)
    return ids


def panel_verdict(version_dir: Path, base_dir: Path, per_kind: int, weights: dict[str, float]) -> dict:
    """Base vs the DPO version on the same held-out edits and seeds: the taste's panel's GSB, world metrics."""
    edits = held_out_edits(per_kind)
    out = {}
    for name, path in (("base", base_dir), ("dpo", version_dir)):
        metrics, images = evaluate_editor(load_instruct_editor(path), edits)
        out[name] = {"metrics": metrics, "utility": np.array([utility(im, e.target, weights)
                                                              for im, e in zip(images, edits)])}
    gsb = panel_gsb(out["dpo"]["utility"], out["base"]["utility"], panel(weights=weights, seed=7))
    rows = {name: {k: out[name]["metrics"][k] for k in ("success", "preservation", "l1_outside")}
            | {"mean_utility": float(out[name]["utility"].mean())} for name in out}
    return {"rows": rows, "gsb": [gsb.good, gsb.same, gsb.bad], "superiority": gsb.superiority, "edits": len(edits)}


def run_taste(name: str, args: argparse.Namespace) -> dict:
    from editloop.registry import fetch_model_dir, find_version

    state = args.work / name
    settings = Settings(state_dir=state, device="cpu", broker_url="", result_backend="")
    sessions, store = open_state(settings)
    t0 = time.time()
    ids = made_sets(settings, sessions, store, args.sets, args.sample_steps)
    made_s = time.time() - t0
    with sessions() as s:
        if not instruct_labels(s):
            simulate_labels(sessions, store, ids, LabelPlan(panel(weights=TASTES[name], seed=11)))
    config = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "dpo_beta": args.beta,
              "eval_per_kind": args.eval_per_kind, "checkpoint_every": 50}
    t1 = time.time()
    out = run_instruct_dpo(uuid.uuid4().hex, sessions, store, settings, config)
    run_s = time.time() - t1
    with sessions() as s:
        row = find_version(s, "instruct", out["version"])
        version_dir = fetch_model_dir(store, row.checkpoint_key, state / "models")
    verdict = panel_verdict(version_dir, settings.instruct_model, args.eval_per_kind, TASTES[name])
    metrics = out["metrics"]
    print(f"{name}: {metrics['labels']} labels, {metrics['pairs']} pairs; DPO run {run_s:.0f}s; promoted "
          f"{out['promoted']}; superiority {verdict['superiority']:.3f} {verdict['gsb']}", flush=True)
    return {"taste": name, "labels": metrics["labels"], "pairs": metrics["pairs"], "version": out["version"],
            "promoted": out["promoted"], "refused": out.get("refused"), "gate": {
                k: metrics.get(k) for k in ("eval_score", "parent_eval_score")},
            "implicit_accuracy_last": metrics.get("implicit_accuracy"), "sets_made_s": made_s, "run_s": run_s,
            **verdict}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/instruct_dpo.json")
    p.add_argument("--work", type=Path, default=ROOT / ".editloop/bench/instruct_dpo")
    p.add_argument("--tastes", default="default")
    p.add_argument("--sets", type=int, default=96, help="instruction-edit sets of 4, one label each")
    p.add_argument("--sample-steps", type=int, default=8, help="the editor's sampling steps for the sets")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--beta", type=float, default=5000.0)
    p.add_argument("--eval-per-kind", type=int, default=6)
    args = p.parse_args()
    report = {"args": {k: str(v) for k, v in vars(args).items()},
              "base": "the committed instruction editor (editloop/weights/instruct)", "tastes": []}
    for name in args.tastes.split(","):
        report["tastes"].append(run_taste(name, args))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float))
    for t in report["tastes"]:
        print(f"\n{t['taste']} taste ({t['labels']} labels, {t['edits']} held-out edits): superiority "
              f"{t['superiority']:.3f}")
        print("| model | success | preservation | L1 outside | panel's mean utility |")
        print("| --- | --- | --- | --- | --- |")
        for model, r in t["rows"].items():
            print(f"| {model} | {r['success']:.3f} | {r['preservation']:.3f} | {r['l1_outside']:.4f} | "
                  f"{r['mean_utility']:.3f} |")


if __name__ == "__main__":
    main()
