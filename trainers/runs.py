"""Training runs: the one place a run's row (status, progress, outputs) and its checkpoint files are written."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editloop.checkpoint import save_checkpoint  # noqa: F401 (the trainers import it from here)

if TYPE_CHECKING:  # the trainers import this module for save_checkpoint alone, on machines without the database
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("editloop.runs")
LOG_EVERY_S = 30.0


BOARD_DIR = "tensorboard"  # a run directory's TensorBoard event files (`tensorboard --logdir <state>/runs`)


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a progress record (not its step, not booleans)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class Board:
    """TensorBoard event files of one run: every progress record's numbers as scalars under `what/`."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what, self.writer = path, what, None

    def add(self, step: int, record: dict[str, Any]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.path), flush_secs=10)
        for key, value in numbers(record).items():
            self.writer.add_scalar(f"{self.what}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def logged(progress: Callable[[int, int, dict[str, float]], None] | None, run_id: str, what: str,
           every_s: float = LOG_EVERY_S, run_dir: Path | None = None) -> Callable[[int, int, dict[str, float]], None]:
    """`progress` that also logs the run's step at INFO (a worker's log says what its run does): every evaluation
    record, the last step, and otherwise at most every `every_s` seconds; with `run_dir`, every record's numbers
    also go to TensorBoard event files in run_dir/tensorboard."""
    last_log = [time.monotonic()]
    board = Board(run_dir / BOARD_DIR, what) if run_dir is not None else None

    def report(step: int, total: int, last: dict[str, float]) -> None:
        now = time.monotonic()
        if board is not None:
            board.add(step, last)
            if step >= total:
                board.close()
        if "eval" in last or step >= total or now - last_log[0] >= every_s:
            last_log[0] = now
            shown = " ".join(f"{k} {v:.4g}" for k, v in numbers(last).items())
            log.info("run %s %s: step %d/%d %s", run_id[:12], what, step, total, shown)
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




def run_once(sessions: sessionmaker[Session], run_id: str, kind: str, inputs: dict[str, Any],
             body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The lifecycle every training run shares: create run `run_id`'s row (status running) or resume it (a retried
    or re-delivered task: the body resumes from the run directory's checkpoint), return a succeeded run's outputs
    without running it again, and on any error record it (status failed, the error, when) and re-raise."""
    from datetime import UTC, datetime

    from editloop.db.models import TrainingRun

    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        if run is None:
            s.add(TrainingRun(id=run_id, kind=kind, status="running", inputs=inputs))
        elif run.status == "succeeded":
            return run.outputs
        else:
            run.status, run.error = "running", None
    try:
        return body()
    except Exception as exc:
        update_run(sessions, run_id, status="failed", error=f"{type(exc).__name__}: {exc}",
                   outputs={"failed_at": datetime.now(UTC).isoformat()})
        raise


def register_and_gate(session: Session, run_id: str, kind: str, version: str, checkpoint_key: str,
                      metrics: dict[str, Any], config: dict[str, Any], parent_id: int | None,
                      outputs: dict[str, Any], check: Callable | None, auto_promote: bool = True,
                      between: Callable[[Session], None] | None = None, **gate: Any) -> dict[str, Any]:
    """A finished run's end, in the caller's transaction: register the candidate version (idempotent), run
    `between` (e.g. a people review's pairs), promote it through the registry's gate when `auto_promote` (`gate`:
    tolerance, floor_alpha), and mark the run succeeded with `outputs` + promoted / refused + the version's id."""
    from editloop.db.models import ModelVersion, TrainingRun
    from editloop.registry import PromotionRefused, promote, register_candidate

    parent = session.get(ModelVersion, parent_id) if parent_id is not None else None
    row = register_candidate(session, kind, kind, version, checkpoint_key, metrics, config, parent)
    if between is not None:
        between(session)
    outputs["promoted"] = False
    if auto_promote:
        try:
            promote(session, kind, version, check, **gate)
            outputs["promoted"] = True
        except PromotionRefused as exc:
            outputs["refused"] = str(exc)
    elif metrics.get("guard_failures"):
        outputs["refused"] = "; ".join(metrics["guard_failures"])
    run = session.get(TrainingRun, run_id)
    run.status, run.progress, run.outputs = "succeeded", 1.0, {**outputs, "model_version_id": row.id}
    return outputs


def job_progress(settings, run_id: str, what: str, run_dir: Path
                 ) -> Callable[[int, int, dict[str, float]], None] | None:
    """A data-parallel job's progress callback (trainers/*/job.py): on rank 0, the run row's progress and last
    record (and the job's size), logged and written to TensorBoard; None on the other ranks."""
    from trainers.distributed import is_main, world

    if not is_main():
        return None
    from editloop.db import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
    size = world()[1]

    def row_progress(step: int, total: int, last: dict[str, float]) -> None:
        update_run(sessions, run_id, progress=step / total, outputs={"last": last, "procs": size})

    return logged(row_progress, run_id, what, run_dir=run_dir)
