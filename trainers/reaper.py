"""Runs never hang in a state: a heartbeat while a worker trains, and a reaper on the beat schedule.

While a training task runs, `heartbeat` touches its run's row every `run_heartbeat_s` seconds from a thread
(a run that already succeeded returns its outputs when delivered again). `reap` finds:
- a "running" run whose heartbeat stopped for `run_stale_s` (its worker died for good), and
- a "queued" run older than `run_lost_s` while its queue is empty and nothing runs (its message was lost),
and sends its task again, resuming from the run's checkpoint, at most `run_max_requeues` times; after that
(or when it cannot be sent again) the run is failed with the reason, and the runs chained after it are
cancelled. Every decision is written on the run's row (`error` holds the reason while it waits again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop import queue
from editloop.db.models import TrainingRun, as_utc
from editloop.settings import Settings

TASKS = {"reward-": queue.TRAIN_REWARD, "feedback-": queue.FEEDBACK_STAGE,
         "align": queue.ALIGN_ROUND, "label-sets": queue.MAKE_LABEL_SETS}



@contextmanager
def heartbeat(sessions: sessionmaker[Session], run_id: str, interval: float) -> Iterator[None]:
    """Touch the run's `updated_at` (and outputs.heartbeat) every `interval` seconds until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with sessions.begin() as s:
                    run = s.get(TrainingRun, run_id)
                    if run is not None and run.status == "running":
                        run.updated_at = datetime.now(UTC)
            except Exception:  # a missed beat is retried at the next one
                pass

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def task_name(kind: str) -> str | None:
    return next((name for prefix, name in TASKS.items() if kind.startswith(prefix)), None)


def resend_args(session: Session, run: TrainingRun) -> list[Any] | None:
    """The task's arguments to send run `run` again (resuming from its checkpoint), or None if it cannot be."""
    config = (run.inputs or {}).get("config")
    if run.kind.startswith("reward-"):
        return [run.kind.removeprefix("reward-"), run.id, (run.inputs or {}).get("sent_config", config)]
    if run.kind == "label-sets":
        return [run.id]
    chain_ids = (run.inputs or {}).get("chain") or [run.id]
    position = chain_ids.index(run.id) if run.id in chain_ids else 0
    previous: dict[str, Any] | None = (run.inputs or {}).get("first") if position == 0 else None
    if position > 0:
        before = session.get(TrainingRun, chain_ids[position - 1])
        if before is None or before.status != "succeeded" or not (before.outputs or {}).get("version"):
            return None
        previous = {"version": before.outputs["version"]}
    sent = (run.inputs or {}).get("sent_config", config)
    if run.kind.startswith("feedback-"):
        return [previous, run.kind.removeprefix("feedback-"), run.id, sent]
    return [previous, run.id, sent]


@dataclass(frozen=True)
class Reaped:
    run_id: str
    action: str  # requeued | failed
    reason: str


def _waiting_on_chain(session: Session, run: TrainingRun) -> bool:
    """A chained run is queued until the run before it ends: not lost while that one is queued or running."""
    chain_ids = (run.inputs or {}).get("chain") or []
    if run.id not in chain_ids or chain_ids.index(run.id) == 0:
        return False
    before = session.get(TrainingRun, chain_ids[chain_ids.index(run.id) - 1])
    return before is not None and before.status in ("queued", "running")


def find_hung(session: Session, settings: Settings, now: datetime, queue_empty: Callable[[str], bool]
              ) -> list[tuple[TrainingRun, str]]:
    hung = []
    busy = session.scalars(select(TrainingRun).where(TrainingRun.status.in_(("queued", "running")))).all()
    stale = timedelta(seconds=settings.run_stale_s)
    anything_running = any(r.status == "running" and now - as_utc(r.updated_at) < stale for r in busy)
    for run in busy:
        age = now - as_utc(run.updated_at)
        if run.status == "running" and age > timedelta(seconds=settings.run_stale_s):
            hung.append((run, f"worker lost: no heartbeat for {age.total_seconds():.0f}s "
                              f"(limit {settings.run_stale_s:.0f}s)"))
        elif (run.status == "queued" and age > timedelta(seconds=settings.run_lost_s) and not anything_running
              and queue_empty("gpu") and not _waiting_on_chain(session, run)):
            hung.append((run, f"message lost: queued for {age.total_seconds():.0f}s with the gpu queue empty "
                              f"(limit {settings.run_lost_s:.0f}s)"))
    return hung


def reap(sessions: sessionmaker[Session], settings: Settings, send: Callable[[str, list[Any], str], None],
         queue_empty: Callable[[str], bool]) -> list[Reaped]:
    """Re-queue or fail every hung run; `send(task name, args, run id)` sends a task message."""
    now, out = datetime.now(UTC), []
    with sessions.begin() as s:
        for run, why in find_hung(s, settings, now, queue_empty):
            requeues = int((run.inputs or {}).get("requeues", 0))
            name, args = task_name(run.kind), resend_args(s, run)
            if requeues < settings.run_max_requeues and name and args is not None:
                run.inputs = {**(run.inputs or {}), "requeues": requeues + 1}
                run.status, run.error = "queued", f"{why}; re-queued from its checkpoint ({requeues + 1} of " \
                                                  f"{settings.run_max_requeues})"
                run.updated_at = now
                out.append(Reaped(run.id, "requeued", run.error))
                s.flush()
                send(name, args, run.id)
            else:
                sendable = name is not None and args is not None
                run.status = "failed"
                run.error = f"{why}; not re-queued (" + (f"gave up after {requeues} re-queues" if sendable else
                                                         "the run cannot be sent again") + ")"
                out.append(Reaped(run.id, "failed", run.error))
                s.flush()
                cancel_chain_after(s, run.id)
    return out


def cancel_chain_after(session: Session, run_id: str) -> list[str]:
    """The runs queued after `run_id` in its chain will not run: say so on their rows; returns their ids."""
    run = session.get(TrainingRun, run_id)
    chain_ids = (run.inputs or {}).get("chain", []) if run else []
    cancelled = []
    for later in chain_ids[chain_ids.index(run_id) + 1:] if run_id in chain_ids else []:
        row = session.get(TrainingRun, later)
        if row is not None and row.status == "queued":
            row.status, row.error = "cancelled", f"stage run {run_id} before it in the chain failed"
            cancelled.append(later)
    return cancelled
