"""One process of a data-parallel reward training job (`python -m trainers.reward.job KIND RUN_ID CONFIG PARENT_KEY`,
started by torchrun from trainers/reward/run.py when EDITLOOP_TRAIN_PROCS > 1).

Every process reads the run's data as the worker built it (job-data.pt in the run directory: the same labels and
examples) and rebuilds the starting model as the worker did (the same seed, the parent's weights already in the
model cache), then trains its share of each batch; rank 0 reports progress on the
run row and leaves best.pt and result.json in the run directory for the worker, which registers the one version.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import torch

from editloop.db import make_engine, make_sessionmaker
from editloop.models.zoo import pick_device
from editloop.registry import fetch_model_dir
from editloop.store.base import open_store
from trainers.distributed import is_main, join_job, leave_job, write_result
from trainers.reward.kinds import kind_trainer
from trainers.reward.run import JOB_DATA, RewardTrainConfig, _start_model, _train, run_progress
from trainers.runs import logged


def main(argv: list[str]) -> None:
    kind, run_id, config, parent_key = argv
    settings = join_job(f"{kind} run {run_id}")
    cfg = RewardTrainConfig(**json.loads(config))
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
    store = open_store(settings)
    data = torch.load(settings.state_dir / "runs" / run_id / JOB_DATA, weights_only=False)
    attach = kind_trainer(kind).attach
    if attach is not None:  # what the worker could not pickle (the aesthetic kind's image cache)
        data = attach(data, store)
    parent_dir = fetch_model_dir(store, parent_key, settings.state_dir / "models") if parent_key else None
    # on this rank's GPU (join_job set it) under NCCL, else the CPU
    model, tokenizer = _start_model(kind, parent_dir, cfg, pick_device(settings.device))
    run_dir = settings.state_dir / "runs" / run_id
    progress = logged(run_progress(sessions, run_id), run_id, f"reward-{kind}", run_dir=run_dir) if is_main() else None
    _, result = _train(kind, model, tokenizer, data, cfg, run_dir, progress)
    if is_main():
        write_result(run_dir / "result.json", asdict(result))
    leave_job()


if __name__ == "__main__":
    main(sys.argv[1:])
