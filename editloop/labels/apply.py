"""Apply pending label events: one preference (or comparison) row per Label Studio annotation, exactly once.

Each batch runs in one transaction that writes the rows and marks its events applied, so a crash
anywhere leaves either all of a batch or none of it. Rules:
- upsert: create the row, or replace it if the event is not older than what is stored;
- delete: the row is retired (kept, with the reason); a deleted annotation is never revived;
- an annotation that cannot be read is stored as `invalid` with the reason, never dropped;
- an event whose task editloop did not push is kept with the outcome "ignored: ..." and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import CandidateItem, Comparison, LabelEvent, LabelTask, Preference, as_utc
from editloop.faults import crash_point
from editloop.labels.events import parse_time
from editloop.labels.results import InvalidLabel, parse_best_worst, parse_side_by_side

DELETED = "deleted in Label Studio"


@dataclass
class ApplyReport:
    applied: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: str) -> None:
        self.applied += 1
        self.outcomes[outcome.split(":")[0]] += 1



def _annotator(payload: dict) -> str:
    who = payload.get("completed_by")
    return f"ls:{who}" if who is not None else "ls:unknown"


def _find_row(session: Session, annotation_id: int) -> Preference | Comparison | None:
    for model in (Preference, Comparison):
        row = session.scalars(select(model).where(model.ls_annotation_id == annotation_id)).one_or_none()
        if row is not None:
            return row
    return None


def _stale(row: Preference | Comparison | None, updated_at: datetime | None) -> str | None:
    if row is None:
        return None
    if row.status == "retired" and row.reason == DELETED:
        return "ignored: annotation was deleted"
    stored = as_utc(row.ls_updated_at)
    if stored is not None and updated_at is not None and updated_at < stored:
        return "ignored: older than the stored version"
    return None


def _apply_best_worst(session: Session, task: LabelTask, event: LabelEvent, row: Preference | None) -> str:
    items = {i.position + 1: i.image_id for i in session.scalars(
        select(CandidateItem).where(CandidateItem.candidate_set_id == task.candidate_set_id))}
    payload = event.payload
    if row is None:
        row = Preference(candidate_set_id=task.candidate_set_id, ls_annotation_id=event.ls_annotation_id)
        session.add(row)
    row.annotator, row.ls_task_id = _annotator(payload), task.ls_task_id
    row.ls_updated_at = parse_time(payload.get("updated_at"))
    try:
        choice = parse_best_worst(payload.get("result"), len(items), payload.get("was_cancelled", False))
        row.best_image_id, row.worst_image_id = items[choice.best], items[choice.worst]
        row.status, row.reason = "valid", None
        return "valid"
    except InvalidLabel as exc:
        row.best_image_id = row.worst_image_id = None
        row.status, row.reason = "invalid", str(exc)
        return f"invalid: {exc}"


def _apply_side_by_side(session: Session, task: LabelTask, event: LabelEvent, row: Comparison | None) -> str:
    payload = event.payload
    if row is None:
        row = Comparison(pair_id=task.pair_id, ls_annotation_id=event.ls_annotation_id)
        session.add(row)
    row.annotator, row.ls_task_id = _annotator(payload), task.ls_task_id
    row.ls_updated_at = parse_time(payload.get("updated_at"))
    try:
        row.verdict = parse_side_by_side(payload.get("result"), task.swapped, payload.get("was_cancelled", False))
        row.status, row.reason = "valid", None
        return "valid"
    except InvalidLabel as exc:
        row.verdict, row.status, row.reason = None, "invalid", str(exc)
        return f"invalid: {exc}"


def apply_event(session: Session, event: LabelEvent) -> str:
    """Apply one event inside the caller's transaction; returns the outcome stored with it."""
    row = _find_row(session, event.ls_annotation_id)
    if event.action == "delete":
        if row is None:
            return "ignored: unknown annotation"
        if row.status != "retired":
            row.status, row.reason = "retired", DELETED
        return "retired"
    task = session.scalars(select(LabelTask).where(LabelTask.ls_task_id == event.ls_task_id)).one_or_none()
    if task is None:
        return f"ignored: task {event.ls_task_id} was not pushed by editloop"
    skip = _stale(row, parse_time(event.payload.get("updated_at")))
    if skip:
        return skip
    if task.kind == "side_by_side":
        return _apply_side_by_side(session, task, event, row if isinstance(row, Comparison) else None)
    return _apply_best_worst(session, task, event, row if isinstance(row, Preference) else None)


def _pending(session: Session, limit: int) -> list[LabelEvent]:
    query = select(LabelEvent).where(LabelEvent.applied_at.is_(None)).order_by(LabelEvent.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)  # two appliers never take the same events
    return list(session.scalars(query))


def apply_pending(sessions: sessionmaker[Session], batch: int = 100,
                  progress: Callable[[int], None] | None = None) -> ApplyReport:
    """Apply every pending event, in id order, one transaction per batch."""
    report = ApplyReport()
    while True:
        with sessions.begin() as session:
            events = _pending(session, batch)
            if not events:
                return report
            for event in events:
                event.outcome = apply_event(session, event)
                event.applied_at = datetime.now(UTC)
                session.flush()
                report.add(event.outcome)
                crash_point("sync.apply")
            crash_point("sync.before_commit")
        crash_point("sync.after_commit")
        if progress is not None:
            progress(len(events))
