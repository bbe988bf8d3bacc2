"""One process of a data-parallel alignment round's editor training (`python -m trainers.align.job RUN_ID SPEC`,
started by torchrun from trainers/align/run.py when EDITLOOP_TRAIN_PROCS > 1; SPEC is a JSON file in the run
directory).

The worker generates and filters the round's pairs and builds the start editor as it does for a one-process round,
then leaves both in the run directory (job-pairs.pt, start-editor/). Every process loads them and trains its share
of each global batch (trainers/align/editor_train.py: the batch's rows, noise and timesteps drawn for the global
batch; gradients averaged before clipping); rank 0 alone reports progress, writes the checkpoints and leaves the
trained editor (trained-editor/, EMA weights) and its history for the worker, which evaluates, registers and gates
the round's one version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from editloop.models.instruct import load_instruct_editor
from trainers.align.editor_train import train_editor
from trainers.align.round_config import RoundConfig
from trainers.distributed import is_main, join_job, leave_job
from trainers.runs import job_progress

TRAINED = "trained-editor"


def main(argv: list[str]) -> None:
    run_id, spec_path = argv
    settings = join_job(f"align run {run_id}")
    spec = json.loads(Path(spec_path).read_text())
    cfg = RoundConfig.from_dict(spec["config"])
    run_dir = settings.state_dir / "runs" / run_id
    editor = load_instruct_editor(run_dir / "start-editor", settings.device)
    pairs = torch.load(run_dir / "job-pairs.pt", weights_only=False)
    progress = job_progress(settings, run_id, f"align-{spec['round']}", run_dir)
    state = train_editor(editor, pairs, cfg.train, run_dir, progress)
    if is_main():
        editor.save(run_dir / TRAINED, {})
        (run_dir / "history.json").write_text(json.dumps(state.history))
    leave_job()


if __name__ == "__main__":
    main(sys.argv[1:])
