"""Celery tasks: thin wrappers that take ids and plain values, open a session, call a function."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from typing import Any

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from editloop.settings import Settings, load_settings
from editloop.state import open_state
from editloop.store.base import BlobStore
from trainers import candidates


@lru_cache(maxsize=1)
def worker_context() -> tuple[Settings, sessionmaker[Session], BlobStore]:
    """Settings, one sessionmaker and the store, made once per worker process."""
    settings = load_settings()
    return settings, *open_state(settings)


@shared_task(name="editloop.gpu.generate_candidates", acks_late=True)
def generate_candidates(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate and record one candidate set; returns its id (the same id when re-run)."""
    settings, sessions, store = worker_context()
    cs = candidates.CandidateSpec(**spec)
    with sessions.begin() as session:
        set_id = candidates.run(cs, session, store, settings)
    return {"candidate_set_id": set_id, "spec": asdict(cs)}


@shared_task(name="editloop.cpu.apply_label_events", acks_late=True)
def apply_label_events() -> dict[str, Any]:
    """Apply the pending label events the webhook receiver recorded (idempotent: none pending, nothing done)."""
    from editloop.labels.apply import apply_pending

    _, sessions, _ = worker_context()
    report = apply_pending(sessions)
    out: dict[str, Any] = {"applied": report.applied, "outcomes": dict(report.outcomes)}
    if report.outcomes.get("valid"):
        out["trigger"] = check_triggers_task.run(source="new labels applied")
    return out


def _enqueue_reward(kind: str, run_id: str, config: dict[str, Any]) -> None:
    train_reward_task.apply_async(args=[kind, run_id, config], task_id=run_id)


@shared_task(name="editloop.cpu.check_triggers", acks_late=True)
def check_triggers_task(source: str = "schedule") -> dict[str, Any]:
    """Start a reward run if new labels or drift call for one (debounced); returns the decision."""
    from trainers.triggers import check_triggers, drift_check

    settings, sessions, store = worker_context()
    decision = check_triggers(sessions, settings, _enqueue_reward, drift_check(store, settings), source)
    return {"start": decision.start, "reason": decision.reason, "run_id": decision.run_id}


@shared_task(name="editloop.gpu.train_reward", acks_late=True)
def train_reward_task(kind: str, run_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume, after a lost worker) reward run `run_id`; registers and gates a candidate version."""
    from trainers.reward.run import RewardTrainConfig, train_reward

    settings, sessions, store = worker_context()
    outputs = train_reward(kind, run_id, sessions, store, settings, RewardTrainConfig(**(config or {})))
    return {k: v for k, v in outputs.items() if k != "history"}


@shared_task(name="editloop.gpu.feedback_stage", acks_late=True)
def feedback_stage_task(previous: dict[str, Any] | None, stage: str, run_id: str,
                        config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) one feedback stage; in a chain, `previous` is the stage before's result and its
    version is where this stage starts."""
    from trainers.feedback.run import run_feedback_stage

    settings, sessions, store = worker_context()
    parent = previous.get("version") if previous else None
    try:
        return run_feedback_stage(stage, run_id, sessions, store, settings, config, parent)
    except Exception:
        cancel_rest_of_chain(sessions, run_id)
        raise


def cancel_rest_of_chain(sessions: sessionmaker[Session], run_id: str) -> None:
    """The stages queued after a failed one will not run: say so on their rows."""
    from editloop.db import TrainingRun

    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        chain_ids = (run.inputs or {}).get("chain", []) if run else []
        for later in chain_ids[chain_ids.index(run_id) + 1:] if run_id in chain_ids else []:
            row = s.get(TrainingRun, later)
            if row is not None and row.status == "queued":
                row.status, row.error = "cancelled", f"stage run {run_id} before it in the chain failed"


@shared_task(name="editloop.gpu.align_round", acks_late=True)
def align_round_task(previous: dict[str, Any] | None, run_id: str, config: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Run (or resume) one SeedEdit alignment round; in a chain, `previous` is the round before's result and
    its editor version is where this round starts (it regenerates the pairs)."""
    from trainers.align.run import run_align_round

    settings, sessions, store = worker_context()
    parent = previous.get("version") if previous else None
    try:
        return run_align_round(run_id, sessions, store, settings, config, parent)
    except Exception:
        cancel_rest_of_chain(sessions, run_id)
        raise
