"""Training runs: the one place a run's row (status, progress, outputs) and its checkpoint files are written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the trainers import this module for save_checkpoint alone, on machines without the database
    from sqlalchemy.orm import Session, sessionmaker


def update_run(sessions: sessionmaker[Session], run_id: str, **fields: Any) -> None:
    from editloop.db.models import TrainingRun

    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        for k, v in fields.items():
            setattr(run, k, v)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save through a temporary file and a rename: a crash mid-write never leaves a torn checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
