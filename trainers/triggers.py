"""Retraining triggers for the aesthetic reward: new labels, drift, a schedule (Celery beat), by hand.

`check_triggers` runs on the beat schedule and after every applied label batch. It decides, records
and enqueues in one transaction under a lock, so a burst of labels (or two checks at once) starts
one run, not fifty:
- debounce: no new run while one of the kind is queued or running, or started less than
  `retrain_debounce_s` ago;
- new labels: valid labels newer than the promoted version's lineage, and than the newest trained version's (a
  refused one too: it is not retrained at once on the same labels) >= `retrain_label_threshold` (with no version
  yet, all valid labels count);
- drift: the promoted model's pairwise accuracy on the newest `drift_window` labels' pairs below
  `drift_min_accuracy` (checked only when at least `drift_window` labels arrived since it trained).
Every started run carries its reason in `training_runs.inputs["trigger"]`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import ModelVersion, Preference, TrainingRun, as_utc
from editloop.registry import promoted
from editloop.settings import Settings

KIND = "aesthetic"  # the kind labels feed; alignment and coherence train from the world and the inpainter
_PG_TRIGGER_LOCK = 0x7472_6967  # "trig"


@dataclass(frozen=True)
class Decision:
    kind: str
    start: bool
    reason: str
    run_id: str | None = None



def _busy(session: Session, settings: Settings, now: datetime) -> str | None:
    last = session.scalars(select(TrainingRun).where(TrainingRun.kind == f"reward-{KIND}")
                           .order_by(TrainingRun.created_at.desc())).first()
    if last is None:
        return None
    age = now - as_utc(last.created_at)
    if last.status in ("queued", "running"):  # a run whose message was lost is the reaper's (trainers/reaper.py)
        return f"debounced: run {last.id} is {last.status}"
    if age < timedelta(seconds=settings.retrain_debounce_s):
        return f"debounced: run {last.id} started less than {settings.retrain_debounce_s:.0f}s ago"
    return None


def new_label_count(session: Session) -> int:
    """Valid labels newer than every label the promoted version, or the newest version trained since (promoted or
    refused), learnt from: a version the gate refused does not make the loop retrain at once on the same labels."""
    current = promoted(session, KIND)
    newest = session.scalars(select(ModelVersion).where(ModelVersion.kind == KIND)
                             .order_by(ModelVersion.id.desc()).limit(1)).first()
    seen = [((v.config or {}).get("lineage") or {}).get("max_label_id", 0) for v in (current, newest) if v]
    since = max(seen, default=0)
    from trainers.reward.data import reward_labels  # torch, loaded only where a count is asked

    return session.scalar(select(func.count()).select_from(
        reward_labels().where(Preference.id > since).order_by(None).subquery())) or 0


def decide(session: Session, settings: Settings, now: datetime,
           drift: Callable[[Session], float | None] | None = None) -> Decision:
    busy = _busy(session, settings, now)
    if busy:
        return Decision(KIND, False, busy)
    fresh = new_label_count(session)
    if fresh >= settings.retrain_label_threshold:
        return Decision(KIND, True, f"new labels: {fresh} >= {settings.retrain_label_threshold}")
    if drift is not None and fresh >= settings.drift_window:
        accuracy = drift(session)
        if accuracy is not None and accuracy < settings.drift_min_accuracy:
            return Decision(KIND, True, f"drift: accuracy {accuracy:.3f} on the newest {settings.drift_window} labels "
                                        f"< {settings.drift_min_accuracy}")
    return Decision(KIND, False, f"no trigger: {fresh} new labels")


def check_triggers(sessions: sessionmaker[Session], settings: Settings, enqueue: Callable[[str, str, dict], None],
                   drift: Callable[[Session], float | None] | None = None, source: str = "schedule") -> Decision:
    """Decide under a lock; if a run starts, its row is committed before the task is sent."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_TRIGGER_LOCK})
        else:  # SQLite: take the write lock now, so two checks cannot both decide to start
            session.execute(text("UPDATE training_runs SET id = id WHERE 1 = 0"))
        decision = decide(session, settings, now, drift)
        if not decision.start:
            return decision
        run_id = uuid.uuid4().hex
        config = {"steps": settings.reward_train_steps, "epochs": settings.reward_train_epochs}
        session.add(TrainingRun(id=run_id, kind=f"reward-{KIND}", status="queued",
                                inputs={"config": config, "trigger": f"{source}: {decision.reason}"}))
    enqueue(KIND, run_id, config)
    return Decision(decision.kind, True, decision.reason, run_id)


def drift_check(store, settings: Settings) -> Callable[[Session], float | None]:
    """The promoted aesthetic model's pairwise accuracy on the newest `drift_window` labels."""

    def accuracy(session: Session) -> float | None:
        from editloop.models.reward import load_reward
        from editloop.registry import fetch_model_dir
        from trainers.reward.aesthetic import pairwise_accuracy
        from trainers.reward.data import ImageCache, newest_pairs

        current = promoted(session, KIND)
        if current is None:
            return None
        pairs = newest_pairs(session, store, settings.drift_window)
        if not pairs:
            return None
        _, model, tokenizer = load_reward(fetch_model_dir(store, current.checkpoint_key,
                                                          settings.state_dir / "models"), KIND)
        return pairwise_accuracy(model, tokenizer, pairs, ImageCache(store))

    return accuracy
