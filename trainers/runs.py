"""Training runs: the one place a run's row (status, progress, outputs) and its checkpoint files are written."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from editloop.checkpoint import save_checkpoint  # noqa: F401 (the trainers import it from here)

if TYPE_CHECKING:  # the trainers import this module for save_checkpoint alone, on machines without the database
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("editloop.runs")
LOG_EVERY_S = 30.0


def logged(progress: Callable[[int, int, dict[str, float]], None] | None, run_id: str, what: str,
           every_s: float = LOG_EVERY_S) -> Callable[[int, int, dict[str, float]], None]:
    """`progress` that also logs the run's step at INFO (a worker's log says what its run does): every evaluation
    record, the last step, and otherwise at most every `every_s` seconds."""
    last_log = [time.monotonic()]

    def report(step: int, total: int, last: dict[str, float]) -> None:
        now = time.monotonic()
        if "eval" in last or step >= total or now - last_log[0] >= every_s:
            last_log[0] = now
            numbers = " ".join(f"{k} {v:.4g}" for k, v in last.items()
                               if k != "step" and isinstance(v, int | float) and not isinstance(v, bool))
            log.info("run %s %s: step %d/%d %s", run_id[:12], what, step, total, numbers)
        if progress is not None:
            progress(step, total, last)

    return report


def update_run(sessions: sessionmaker[Session], run_id: str, **fields: Any) -> None:
    from editloop.db.models import TrainingRun

    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        for k, v in fields.items():
            setattr(run, k, v)


def throttled(progress: Callable[[int, int, dict[str, float]], None] | None, every_s: float = 2.0
              ) -> Callable[[int, int, dict[str, float]], None] | None:
    """`progress(step, total, last)` called at most every `every_s` seconds, but always at the last step and
    for an evaluation record: the loops report every step, the run's row is written a few times a minute."""
    if progress is None:
        return None
    last_call = [float("-inf")]

    def report(step: int, total: int, last: dict[str, float]) -> None:
        now = time.monotonic()
        if now - last_call[0] >= every_s or step >= total or "eval" in last:
            last_call[0] = now
            progress(step, total, last)

    return report


