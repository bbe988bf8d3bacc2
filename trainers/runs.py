"""Training-run rows: the one place a run's status, progress and outputs are written."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import TrainingRun


def update_run(sessions: sessionmaker[Session], run_id: str, **fields: Any) -> None:
    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        for k, v in fields.items():
            setattr(run, k, v)
