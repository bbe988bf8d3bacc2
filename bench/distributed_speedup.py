"""Speed-up of a data-parallel training run (EDITLOOP_TRAIN_PROCS) over one process, on this machine.

    .venv/bin/python bench/distributed_speedup.py --procs 1 2 --steps 60 --out bench/results/distributed_speedup.json
    .venv/bin/python bench/distributed_speedup.py --run feedback --steps 12 --batch-size 4 \
        --out bench/results/distributed_speedup_feedback.json
    .venv/bin/python bench/distributed_speedup.py --run align --steps 40 --batch-size 8 \
        --out bench/results/distributed_speedup_align.json

`--run reward`: one aesthetic run per world size on the same labels (simulated panel, 60 candidate sets), timed
from train_reward's start to its registered version (the job's start-up and data loading included). `--run
feedback`: a PeFL stage on the committed base against untrained tiny rewards; `--run align`: an alignment round
(its pairs made and filtered by the worker in each run). For those two the table also gives the training steps'
own time (the sum of the steps' seconds in the run's history: the part the job parallelises; the worker's
evaluation and pair making are the same in every row). The single process uses torch's default threads, each of
N processes one thread (OMP_NUM_THREADS=1). Reports seconds and ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import torch

from editloop.db import make_engine, make_sessionmaker, upgrade
from editloop.labels.simulated import LabelPlan, render_candidate_sets, simulate_labels
from editloop.settings import Settings
from editloop.store.local import LocalBlobStore
from editloop.world.annotators import SimulatedAnnotator
from trainers.reward.run import RewardTrainConfig, train_reward


def reward_run(settings: Settings, sessions, store, args: argparse.Namespace):
    ids = render_candidate_sets(sessions, store, 60, 4, seed=0)
    simulate_labels(sessions, store, ids, LabelPlan([SimulatedAnnotator("sharp", 0.25, seed=0)]))
    cfg = RewardTrainConfig(steps=args.steps, batch_size=args.batch_size, eval_every=args.steps, auto_promote=False)

    def run(run_settings: Settings) -> dict:
        out = train_reward("aesthetic", uuid.uuid4().hex, sessions, store, run_settings, cfg)
        return {"eval_score": out["metrics"]["eval_score"]}

    return run


def feedback_run(settings: Settings, sessions, store, args: argparse.Namespace):
    from editloop.models.reward import save_reward, tiny_reward
    from editloop.registry import promote, register_candidate, store_model_dir
    from trainers.feedback.run import run_feedback_stage

    for kind in ("aesthetic", "alignment"):
        path = settings.state_dir / "rewards" / kind
        save_reward(tiny_reward(kind, seed=1), kind, path, version=f"{kind}-bench")
        with sessions.begin() as s:
            register_candidate(s, kind, kind, f"{kind}-bench", store_model_dir(store, path), {"eval_score": 0.5}, {},
                               None)
            promote(s, kind, f"{kind}-bench", force=True)
    config = {"steps": args.steps, "batch_size": args.batch_size, "checkpoint_every": args.steps,
              "eval": {"examples": 3, "auto_promote": False}}

    def run(run_settings: Settings) -> dict:
        run_id = uuid.uuid4().hex
        run_feedback_stage("pefl", run_id, sessions, store, run_settings, config)
        history = torch.load(settings.state_dir / "runs" / run_id / "checkpoint.pt", weights_only=False)["history"]
        return {"train_seconds": round(sum(h["seconds"] for h in history), 1), "final_loss": history[-1]["loss"]}

    return run


def align_run(settings: Settings, sessions, store, args: argparse.Namespace):
    from trainers.align.run import run_align_round

    config = {"pairs": 16, "pair_steps": 4, "scorer": "judge", "min_pairs": 1, "eval_per_kind": 1,
              "auto_promote": False,
              "train": {"steps": args.steps, "batch_size": args.batch_size, "checkpoint_every": args.steps}}

    def run(run_settings: Settings) -> dict:
        run_id = uuid.uuid4().hex
        run_align_round(run_id, sessions, store, run_settings, config)
        history = torch.load(settings.state_dir / "runs" / run_id / "editor.pt", weights_only=False)["history"]
        return {"train_seconds": round(sum(h["seconds"] for h in history), 1), "final_loss": history[-1]["loss"]}

    return run


RUNS = {"reward": reward_run, "feedback": feedback_run, "align": align_run}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", choices=list(RUNS), default="reward")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("bench/results/distributed_speedup.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp) / "state", device="cpu")
        url = settings.resolved_database_url()
        upgrade(url)
        sessions, store = make_sessionmaker(make_engine(url)), LocalBlobStore(settings.resolved_blob_dir())
        run = RUNS[args.run](settings, sessions, store, args)
        rows = []
        for procs in args.procs:
            t0 = time.perf_counter()
            extra = run(settings.model_copy(update={"train_procs": procs}))
            rows.append({"procs": procs, "seconds": round(time.perf_counter() - t0, 1), **extra})
            print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["speedup_vs_first"] = round(rows[0]["seconds"] / row["seconds"], 3)
        if "train_seconds" in row:
            row["train_speedup_vs_first"] = round(rows[0]["train_seconds"] / row["train_seconds"], 3)
    result = {"run": args.run, "machine": f"{torch.get_num_threads()} torch threads, CPU", "steps": args.steps,
              "batch_size": args.batch_size, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
