"""A whole ByteEdit feedback round from the CLI through a real Celery worker, then judged by the panel (issue 6).

    .venv/bin/python bench/feedback_round.py --aesthetic DIR --alignment DIR      # ~20 CPU-minutes

1. a fresh platform state (embedded broker, SQLite, local blob store) under --state; the given trained
   aesthetic and alignment rewards (e.g. bench/feedback_quality.py's, kept by --reward-cache) are
   registered and promoted; the coherence critic starts untrained (`tiny_reward`) and learns online as the
   adversarial stage's discriminator;
2. a real worker on the `gpu` queue runs `editloop train progressive --steps N --wait`: PeFL -> adversarial
   -> progressive (8 steps, trailing timesteps), each stage gated against the model served at the time (the
   promoted editor, else the base; BENCHMARKS.md has the run made before this gate fix); with --review panel
   the gate also asks the reviewers (the world's simulated annotators, their own seed, on the gate's held-out
   edits) side by side, and with --select-every N each stage hands its gate the snapshot its reviewers (or,
   without a review, its rewards) score best on a validation set of its own (trainers/feedback/selection.py);
3. every stage's version, and the base inpainting model at 20 and 8 steps, are sampled on held-out examples
   (bench/feedback_quality.py's fresh set) and judged by the default-taste panel: mean utility (per task),
   GSB against the 20-step base, world-judge success, ms per image.
Writes bench/results/feedback_round.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun, make_engine, make_sessionmaker, upgrade
from editloop.models.base import base_model_dir
from editloop.models.reward import save_reward, tiny_reward
from editloop.models.zoo import load_pipeline
from editloop.registry import fetch_model_dir, promote, register_candidate, store_model_dir
from editloop.settings import Settings
from editloop.store.local import LocalBlobStore
from editloop.world.annotators import DEFAULT_WEIGHTS, panel
from services.core.sampling import ModelDefaults
from trainers.feedback.evaluate import panel_gsb, sample, utilities, utility_by_task
from trainers.feedback.examples import feedback_examples, success_rate


def fresh_state(root: Path) -> tuple[dict, Settings]:
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(root), "EDITLOOP_BROKER_URL": "", "EDITLOOP_RESULT_BACKEND": "",
           "EDITLOOP_DEVICE": "cpu"}
    settings = Settings(state_dir=root, broker_url="", result_backend="", device="cpu")
    upgrade(settings.resolved_database_url())
    return env, settings


def promote_rewards(settings: Settings, dirs: dict[str, Path]) -> None:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
    store = LocalBlobStore(settings.resolved_blob_dir())
    for kind, path in dirs.items():
        with sessions.begin() as s:
            register_candidate(s, kind, kind, f"{kind}-bench", store_model_dir(store, path), {"eval_score": 0.5}, {},
                               None)
            promote(s, kind, f"{kind}-bench", force=True)  # trained by the bench, not by this platform's runs


def run_round(env: dict, steps: int, batch: int, eval_examples: int, extra: list[str]
              ) -> tuple[subprocess.CompletedProcess, float]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "trainers.celery_app", "worker", "-Q", "gpu", "--pool", "solo",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"round-{uuid.uuid4().hex[:6]}@%h"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        done = subprocess.run([sys.executable, "-m", "editloop.cli.main", "train", "progressive", "--steps", str(steps),
                               "--batch-size", str(batch), "--eval-examples", str(eval_examples), "--wait", *extra],
                              env=env, capture_output=True, text=True, timeout=7200)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return done, time.time() - t0


def judged(model: Path, steps: int, examples, seed: int) -> dict:
    pipe = load_pipeline(model, "inpaint", device="cpu", dtype="fp32")
    t0 = time.perf_counter()
    images = sample(pipe, examples, seed, steps).images
    ms = 1000 * (time.perf_counter() - t0) / len(examples)
    return {"utility": utilities(images, examples, DEFAULT_WEIGHTS), "success": success_rate(images, examples),
            "ms_per_image": ms, "steps": steps, "spacing": pipe.scheduler.config.get("timestep_spacing")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aesthetic", type=Path, required=True, help="trained aesthetic reward directory")
    parser.add_argument("--alignment", type=Path, required=True, help="trained alignment reward directory")
    parser.add_argument("--state", type=Path, default=Path(".editloop/bench/round"))
    parser.add_argument("--steps", type=int, default=60, help="training steps per stage")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-examples", type=int, default=48, help="held-out examples of each stage's gate")
    parser.add_argument("--review", choices=["none", "panel"], default="none",
                        help="panel: each stage's gate also needs the reviewers' side-by-side preference")
    parser.add_argument("--select-every", type=int, default=0,
                        help="> 0: each stage keeps a snapshot every N steps and hands its gate the best on validation")
    parser.add_argument("--task-reward-scale", action="append", default=[], metavar="TASK=SCALE",
                        help="passed to `editloop train progressive` (repeatable), e.g. erase=0")
    parser.add_argument("--kl-weight", type=float, default=0.0,
                        help="DPOK's KL trust region to each stage's start model (`editloop train --kl-weight`)")
    parser.add_argument("--judge", type=int, default=144, help="held-out examples the panel judges afterwards")
    parser.add_argument("--seed", type=int, default=950_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "feedback_round.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    env, settings = fresh_state(args.state.resolve())
    critic = args.state.resolve() / "critic"
    save_reward(tiny_reward("coherence", 0), "coherence", critic, version="coherence-untrained")
    promote_rewards(settings, {"aesthetic": args.aesthetic, "alignment": args.alignment, "coherence": critic})
    extra = ["--review", args.review, "--select-every", str(args.select_every), "--kl-weight", str(args.kl_weight)]
    extra += [arg for item in args.task_reward_scale for arg in ("--task-reward-scale", item)]
    done, seconds = run_round(env, args.steps, args.batch_size, args.eval_examples, extra)
    print(done.stdout[-4000:], done.stderr[-2000:] if done.returncode else "", flush=True)
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
    store = LocalBlobStore(settings.resolved_blob_dir())
    with sessions() as s:
        runs = s.scalars(select(TrainingRun).order_by(TrainingRun.created_at)).all()
        stages = [{"stage": r.kind, "status": r.status, "error": r.error, **{k: (r.outputs or {}).get(k) for k in (
            "version", "promoted", "refused", "checkpoint_key")}, "gate_metrics": {
            k: (r.outputs or {}).get("metrics", {}).get(k) for k in (
                "feedback_score", "success", "steps", "review", "selected_step", "selection_scores")},
            "parent_metrics": {k: (r.outputs or {}).get("metrics", {}).get("parent", {}).get(k)
                               for k in ("feedback_score", "success", "steps")}} for r in runs]
        editor = s.scalars(select(ModelVersion).where(ModelVersion.kind == "editor",
                                                      ModelVersion.status == "promoted")).first()
        promoted_version = editor.version if editor is not None else None
    examples = feedback_examples(args.judge, args.seed)
    tasks = [e.task for e in examples]
    base = base_model_dir("inpaint")
    models = {"base (20)": judged(base, 20, examples, args.seed), "base (8)": judged(base, 8, examples, args.seed)}
    for st in stages:
        if st["checkpoint_key"]:
            path = fetch_model_dir(store, st["checkpoint_key"], settings.state_dir / "models")
            models[st["version"]] = judged(path, ModelDefaults.from_dir(path).steps, examples, args.seed)
    rows = []
    for name, m in models.items():
        gsb = panel_gsb(m["utility"], models["base (20)"]["utility"], panel(weights=DEFAULT_WEIGHTS, seed=7))
        u = m["utility"]
        rows.append({"model": name, "promoted": name == promoted_version, "steps": m["steps"], "spacing": m["spacing"],
                     "mean_utility": float(u.mean()), "utility_by_task": utility_by_task(u, tasks),
                     "gsb_vs_base20": [gsb.good, gsb.same, gsb.bad], "superiority": gsb.superiority,
                     "success": m["success"], "ms_per_image": m["ms_per_image"]})
        print(f"{name}: {m['steps']} steps ({m['spacing']}), utility {u.mean():.3f}, GSB vs base-20 "
              f"{rows[-1]['gsb_vs_base20']}, success {m['success']:.3f}, {m['ms_per_image']:.0f} ms/image"
              f"{' (promoted)' if rows[-1]['promoted'] else ''}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "bench/feedback_round.py " + " ".join(sys.argv[1:]),
                                    "cli_returncode": done.returncode, "round_seconds": seconds, "stages": stages,
                                    "promoted_editor": promoted_version, "rows": rows}, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
