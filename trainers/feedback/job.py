"""One process of a data-parallel feedback stage (`python -m trainers.feedback.job RUN_ID SPEC`, started by torchrun
from trainers/feedback/run.py when EDITLOOP_TRAIN_PROCS > 1; SPEC is a JSON file in the run directory).

Every process loads the stage's start model and its rewards from the paths the worker resolved (the model cache),
and trains its share of each global batch (trainers/feedback/loop.py: the batch's examples and noise are drawn for
the global batch and each rank keeps its rows; gradients are averaged before clipping). Rank 0 alone reports
progress on the run row, writes the checkpoints (the run resumes from them, in one process or several) and leaves
the trained UNet (EMA weights, LoRA merged) in the run directory for the worker, which evaluates, registers and gates
the one version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from editloop.models.zoo import load_pipeline
from trainers.distributed import is_main, join_job, leave_job
from trainers.feedback.loop import FeedbackConfig, train_feedback
from trainers.feedback.rewards import load_rewards
from trainers.runs import job_progress

TRAINED = "trained-unet.pt"  # the job's result: the UNet's state dict after training


def main(argv: list[str]) -> None:
    run_id, spec_path = argv
    settings = join_job(f"feedback run {run_id}")
    spec = json.loads(Path(spec_path).read_text())
    cfg = FeedbackConfig.from_dict(spec["config"])
    pipe = load_pipeline(Path(spec["start_dir"]), "inpaint", device=settings.device, dtype="fp32")
    rewards = load_rewards({k: Path(p) for k, p in spec["rewards"].items()}, spec["versions"]).to(pipe.unet.device)
    run_dir = settings.state_dir / "runs" / run_id
    progress = job_progress(settings, run_id, f"feedback-{cfg.stage}", run_dir)
    torch.manual_seed(cfg.seed)
    train_feedback(pipe, rewards, cfg, run_dir, progress)
    if is_main():
        tmp = run_dir / f"{TRAINED}.tmp"
        torch.save(pipe.unet.state_dict(), tmp)
        tmp.replace(run_dir / TRAINED)
    leave_job()


if __name__ == "__main__":
    main(sys.argv[1:])
