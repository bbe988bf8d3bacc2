"""Feedback chains on the queue: one training-run row per stage (queued, with the reason it started), then one
Celery chain whose each stage starts from the version the stage before made; the same for chains of alignment
rounds, and a single instruction-editor DPO run (an ALIGN_ROUND message too). Used by `editloop train` and by
the automatic loop (trainers.autoloop)."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery, chain
from sqlalchemy.orm import Session

from editloop import queue
from editloop.db.models import TrainingRun
from editloop.queue import AlignRound, FeedbackStage

FEEDBACK_TASK = queue.FEEDBACK_STAGE
ALIGN_TASK = queue.ALIGN_ROUND


def add_feedback_rows(session: Session, stages: list[str], config: dict[str, Any], reason: str) -> list[str]:
    """Queued rows for the chain's stages (the caller commits before sending); returns their run ids."""
    run_ids = [uuid.uuid4().hex for _ in stages]
    for stage, run_id in zip(stages, run_ids):
        session.add(TrainingRun(id=run_id, kind=f"feedback-{stage}", status="queued",
                                inputs={"config": config, "trigger": reason, "chain": run_ids}))
    return run_ids


def send_feedback_chain(app: Celery, stages: list[str], run_ids: list[str], config: dict[str, Any]) -> None:
    links = [FeedbackStage(stage, run_id, config) for stage, run_id in zip(stages, run_ids)]
    sigs = [app.signature(FEEDBACK_TASK, args=link.args(first=i == 0), task_id=link.run_id)
            for i, link in enumerate(links)]  # each after the first gets the stage before's result first
    chain(*sigs).apply_async()


def add_align_rows(session: Session, rounds: int, config: dict[str, Any], reason: str,
                   start_version: str | None = None) -> list[str]:
    """Queued rows for a chain of SeedEdit alignment rounds (the caller commits before sending); the first round
    continues instruct version `start_version` if given, else starts from the weak generator."""
    from trainers.align.round_config import RoundConfig

    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds}")
    RoundConfig.from_dict(config)  # refuse bad settings here, not in the worker
    run_ids = [uuid.uuid4().hex for _ in range(rounds)]
    for run_id in run_ids:
        session.add(TrainingRun(id=run_id, kind="align", status="queued",
                                inputs={"config": config, "trigger": reason, "chain": run_ids,
                                        **({"first": {"version": start_version}} if start_version else {})}))
    return run_ids


def send_align_chain(app: Celery, run_ids: list[str], config: dict[str, Any], start_version: str | None = None
                     ) -> None:
    first = {"version": start_version} if start_version else None
    links = [AlignRound(run_id, config, first if i == 0 else None) for i, run_id in enumerate(run_ids)]
    sigs = [app.signature(ALIGN_TASK, args=link.args(first=i == 0), task_id=link.run_id)
            for i, link in enumerate(links)]  # each after the first gets the round before's result first
    chain(*sigs).apply_async()


def add_instruct_tuning_row(session: Session, config: dict[str, Any], reason: str, start_version: str | None,
                            method: str = "dpo") -> str:
    """The queued row of an instruction-editor DPO or GRPO run (trainers/align/tuning.py) starting from instruct
    version `start_version` (None: the committed editor), its config checked first; the caller commits before
    sending."""
    from trainers.align.tuning import KINDS, split_config

    split_config(config, method)
    run_id = uuid.uuid4().hex
    session.add(TrainingRun(id=run_id, kind=KINDS[method], status="queued", inputs={
        "config": config, "trigger": reason, "chain": [run_id],
        **({"first": {"version": start_version}} if start_version else {})}))
    return run_id


def send_instruct_tuning(app: Celery, run_id: str, config: dict[str, Any], start_version: str | None) -> None:
    link = AlignRound(run_id, config, {"version": start_version} if start_version else None)
    app.send_task(ALIGN_TASK, args=link.args(), task_id=run_id)
