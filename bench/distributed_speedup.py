"""Speed-up of a data-parallel reward run (EDITLOOP_TRAIN_PROCS) over one process, on this machine.

    .venv/bin/python bench/distributed_speedup.py --procs 1 2 --steps 60 --out bench/results/distributed_speedup.json

One aesthetic run per world size on the same labels (simulated panel, 60 candidate sets), same config, timed from
train_reward's start to its registered version (the job's start-up and data loading included); the single process
uses torch's default threads, each of N processes one thread (OMP_NUM_THREADS=1). Reports seconds and ratios.
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


def main() -> None:
    ap = argparse.ArgumentParser()
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
        ids = render_candidate_sets(sessions, store, 60, 4, seed=0)
        simulate_labels(sessions, store, ids, LabelPlan([SimulatedAnnotator("sharp", 0.25, seed=0)]))
        cfg = RewardTrainConfig(steps=args.steps, batch_size=args.batch_size, eval_every=args.steps,
                                auto_promote=False)
        rows = []
        for procs in args.procs:
            t0 = time.perf_counter()
            out = train_reward("aesthetic", uuid.uuid4().hex, sessions, store,
                               settings.model_copy(update={"train_procs": procs}), cfg)
            seconds = time.perf_counter() - t0
            rows.append({"procs": procs, "seconds": round(seconds, 1), "eval_score": out["metrics"]["eval_score"]})
            print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["speedup_vs_first"] = round(rows[0]["seconds"] / row["seconds"], 3)
    result = {"machine": f"{torch.get_num_threads()} torch threads, CPU", "steps": args.steps,
              "batch_size": args.batch_size, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
