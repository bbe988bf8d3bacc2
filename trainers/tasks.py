"""Celery tasks: thin wrappers that take ids and plain values, open a session, call a function."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import lru_cache
from typing import Any

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from editloop import queue
from editloop.settings import Settings, load_settings
from editloop.state import open_state
from editloop.store.base import BlobStore
from trainers import candidates


@lru_cache(maxsize=1)
def worker_context() -> tuple[Settings, sessionmaker[Session], BlobStore]:
    """Settings, one sessionmaker and the store, made once per worker process."""
    settings = load_settings()
    return settings, *open_state(settings)


@shared_task(name=queue.GENERATE_CANDIDATES, acks_late=True)
def generate_candidates(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate and record one candidate set; returns its id (the same id when re-run)."""
    settings, sessions, store = worker_context()
    cs = candidates.CandidateSpec(**spec)
    with sessions.begin() as session:
        set_id = candidates.run(cs, session, store, settings)
    return {"candidate_set_id": set_id, "spec": asdict(cs)}


@shared_task(name=queue.GENERATE_CANDIDATE_SETS, bind=True, acks_late=True)
def generate_candidate_sets(self, specs: list[dict[str, Any]]) -> list[int]:
    """Many candidate sets in one task (one model load, one message): each set is committed as it is made, so a
    redelivered task skips the sets already made (by idempotency key); reports PROGRESS {done, total}."""
    queue.GenerateCandidateSets(specs)  # a malformed message fails here, before any model loads
    settings, sessions, store = worker_context()
    ids = []
    for i, spec in enumerate(specs):
        with sessions.begin() as session:
            ids.append(candidates.run(candidates.CandidateSpec(**spec), session, store, settings))
        if self.request.id:
            self.update_state(state="PROGRESS", meta={"done": i + 1, "total": len(specs)})
    return ids


@shared_task(name=queue.APPLY_LABEL_EVENTS, acks_late=True)
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


@shared_task(name=queue.CHECK_TRIGGERS, acks_late=True)
def check_triggers_task(source: str = "schedule") -> dict[str, Any]:
    """Start a reward run if new labels or drift call for one (debounced); returns the decision."""
    from trainers.triggers import check_triggers, drift_check

    settings, sessions, store = worker_context()
    decision = check_triggers(sessions, settings, _enqueue_reward, drift_check(store, settings), source)
    return {"start": decision.start, "reason": decision.reason, "run_id": decision.run_id}


@shared_task(name=queue.CHECK_LOOP, acks_late=True)
def check_loop_task(source: str = "schedule") -> dict[str, Any]:
    """Start a feedback round if a reward the loop's policy names was promoted since the last one, a batch of
    candidate sets for Label Studio if the served editor has none yet, and SeedEdit alignment rounds if the
    alignment reward was promoted since the last ones, and a DPO run of the instruction editor when enough new
    labels on instruction-edit sets came in (each debounced)."""
    from trainers.loop_legs import check_legs

    settings, sessions, _ = worker_context()
    legs = check_legs(sessions, settings, check_loop_task.app, source)
    feedback = legs.pop("feedback")
    return {"start": feedback.start, "reason": feedback.reason, "run_ids": list(feedback.run_ids),
            **{name: {"start": d.start, "reason": d.reason, "run_ids": list(d.run_ids)} for name, d in legs.items()}}


@shared_task(name=queue.MAKE_LABEL_SETS, bind=True, acks_late=True)
def make_label_sets_task(self, run_id: str) -> dict[str, Any]:
    """Make a batch's pool of candidate sets from its editor, choose the sets to label and push them to Label
    Studio (trainers.label_rounds); reports PROGRESS {done, total} while making."""
    from annotation.push import push_to_label_studio
    from trainers.label_rounds import make_label_sets

    queue.MakeLabelSets(run_id)
    settings, sessions, store = worker_context()

    def progress(done: int, total: int) -> None:
        if self.request.id:
            self.update_state(state="PROGRESS", meta={"done": done, "total": total})

    def push(ids: list[int], overlap: int) -> dict[str, Any]:
        report = push_to_label_studio(settings, sessions, store, ids, overlap)
        return {"created": report.created, "adopted": report.adopted, "already": report.already,
                "projects": report.projects}

    with beating(run_id):
        return make_label_sets(run_id, sessions, store, settings, progress, push)


@shared_task(name=queue.TRAIN_REWARD, acks_late=True)
def train_reward_task(kind: str, run_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume, after a lost worker) reward run `run_id`; registers and gates a candidate version."""
    from trainers.reward.run import RewardTrainConfig, train_reward

    queue.TrainReward(kind, run_id, config)
    settings, sessions, store = worker_context()
    with beating(run_id):
        outputs = train_reward(kind, run_id, sessions, store, settings, RewardTrainConfig(**(config or {})))
    if outputs.get("promoted"):  # the loop reacts now, not at the next beat
        check_loop_task.apply_async(kwargs={"source": f"{kind} reward promoted"}, queue="cpu")
    return {k: v for k, v in outputs.items() if k != "history"}


@shared_task(name=queue.FEEDBACK_STAGE, acks_late=True)
def feedback_stage_task(previous: dict[str, Any] | None, stage: str, run_id: str,
                        config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) one feedback stage; in a chain, `previous` is the stage before's result and its
    version is where this stage starts."""
    from trainers.feedback.run import run_feedback_stage

    queue.FeedbackStage(stage, run_id, config, previous)
    settings, sessions, store = worker_context()
    parent = previous.get("version") if previous else None
    try:
        with beating(run_id):
            outputs = run_feedback_stage(stage, run_id, sessions, store, settings, config, parent)
    except Exception:
        cancel_rest_of_chain(sessions, run_id)
        raise
    if outputs.get("promoted"):  # the served editor changed: the loop makes its candidate sets now
        check_loop_task.apply_async(kwargs={"source": f"editor {outputs['version']} promoted"}, queue="cpu")
    return outputs


def cancel_rest_of_chain(sessions: sessionmaker[Session], run_id: str) -> None:
    """The stages queued after a failed one will not run: say so on their rows."""
    from trainers.reaper import cancel_chain_after

    with sessions.begin() as s:
        cancel_chain_after(s, run_id)


@contextmanager
def beating(run_id: str) -> Iterator[None]:
    """The run's heartbeat while its task runs (trainers.reaper finds runs whose worker stopped beating), and its
    directory mirrored into the blob store (restored first when another host had started it)."""
    from trainers.reaper import heartbeat
    from trainers.run_mirror import drop_snapshots, mirrored

    settings, sessions, store = worker_context()
    run_dir = settings.state_dir / "runs" / run_id
    with heartbeat(sessions, run_id, settings.run_heartbeat_s), \
            mirrored(sessions, store, run_id, run_dir, settings.run_mirror_s):
        yield
    drop_snapshots(sessions, store, run_id)  # the run succeeded: its snapshots served their purpose


@shared_task(name=queue.REAP_RUNS, acks_late=True)
def reap_runs_task() -> list[dict[str, str]]:
    """Re-queue (from the checkpoint) or fail runs whose worker died or whose message was lost."""
    from trainers.queues import queue_depth
    from trainers.reaper import reap

    settings, sessions, _ = worker_context()
    app = reap_runs_task.app

    def queue_empty(queue: str) -> bool:
        return queue_depth(settings.resolved_broker_url(), queue) == 0  # an unreachable broker: no reaping now

    def send(name: str, args: list[Any], run_id: str) -> None:
        app.send_task(name, args=args, task_id=run_id)

    return [asdict(r) for r in reap(sessions, settings, send, queue_empty)]


@shared_task(name=queue.ALIGN_ROUND, acks_late=True)
def align_round_task(previous: dict[str, Any] | None, run_id: str, config: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Run (or resume) one SeedEdit alignment round; in a chain, `previous` is the round before's result and
    its editor version is where this round starts (it regenerates the pairs). A run recorded as an
    instruction-editor tuning run (kind "align-dpo" or "align-grpo", trainers/align/tuning.py) trains by DPO or GRPO
    from `previous`'s version instead."""
    from functools import partial

    from editloop.db.models import TrainingRun
    from trainers.align.run import run_align_round
    from trainers.align.tuning import method_of, run_instruct_tuning

    queue.AlignRound(run_id, config, previous)
    settings, sessions, store = worker_context()
    parent = previous.get("version") if previous else None
    with sessions() as s:
        row = s.get(TrainingRun, run_id)
        tuning = method_of(row.kind) if row is not None else None
    run = partial(run_instruct_tuning, tuning) if tuning else run_align_round
    try:
        with beating(run_id):
            return run(run_id, sessions, store, settings, config, parent)
    except Exception:
        cancel_rest_of_chain(sessions, run_id)
        raise
