"""`editloop annotation sync`: the reconciler. Poll Label Studio, record what the database lacks, apply.

Webhooks are fast but can be missed (receiver down, network, a crash after Label Studio sent
one); the reconciler makes the database agree with Label Studio whatever happened:
1. fetch every annotation of every project editloop pushed to;
2. record an upsert event for each one the database lacks or holds in an older version, and a
   delete event for each stored row whose annotation is gone (one transaction);
3. apply every pending event (editloop.labels.apply), webhook ones included.
Each stage can be killed; the next run redoes only what did not commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from label_studio_sdk import LabelStudio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from annotation.client import annotation_dicts, iter_tasks
from editloop.db.models import Comparison, LabelTask, Preference
from editloop.faults import crash_point
from editloop.labels.apply import DELETED, ApplyReport, apply_pending
from editloop.labels.events import (
    BadPayload,
    EventIn,
    delete_event,
    event_from_annotation,
    parse_time,
    record_events,
)


@dataclass
class SyncReport:
    seen: int = 0  # annotations in Label Studio
    recorded: int = 0  # new events from the reconciler
    malformed: list[str] = field(default_factory=list)
    applied: ApplyReport = field(default_factory=ApplyReport)


def _stored_versions(session: Session, task_ids: set[int]) -> dict[int, tuple[datetime | None, str]]:
    """annotation id -> (stored updated_at, "deleted" or the status) for rows of these tasks."""
    out = {}
    for model in (Preference, Comparison):
        rows = session.execute(select(model.ls_annotation_id, model.ls_updated_at, model.status, model.reason)
                               .where(model.ls_task_id.in_(task_ids)))
        for ann_id, updated, status, reason in rows:
            if updated is not None and updated.tzinfo is None:
                updated = updated.replace(tzinfo=UTC)
            out[ann_id] = (updated, "deleted" if reason == DELETED else status)
    return out


def observe(ls: LabelStudio, project_ids: list[int], report: SyncReport) -> list[dict]:
    annotations = []
    for project_id in project_ids:
        for task in iter_tasks(ls, project_id):
            annotations.extend(annotation_dicts(task))
    report.seen = len(annotations)
    return annotations


def differences(session: Session, annotations: list[dict], task_ids: set[int], report: SyncReport) -> list[EventIn]:
    stored = _stored_versions(session, task_ids)
    events, live = [], set()
    for annotation in annotations:
        try:
            event = event_from_annotation(annotation)
        except BadPayload as exc:
            report.malformed.append(str(exc))
            continue
        live.add(event.annotation_id)
        have = stored.get(event.annotation_id)
        if have is None or (have[1] != "deleted" and have[0] != parse_time(event.payload.get("updated_at"))):
            events.append(event)
    events.extend(delete_event(ann_id) for ann_id, (_, status) in stored.items()
                  if ann_id not in live and status != "deleted")
    return events


def sync(ls: LabelStudio, sessions: sessionmaker[Session], progress: Callable[[int], None] | None = None) -> SyncReport:
    """Reconcile every project editloop pushed to, then apply all pending events."""
    report = SyncReport()
    with sessions() as session:
        project_ids = sorted(set(session.scalars(select(LabelTask.ls_project_id))))
        task_ids = set(session.scalars(select(LabelTask.ls_task_id)))
    annotations = observe(ls, project_ids, report)
    crash_point("sync.observed")
    with sessions.begin() as session:
        report.recorded = record_events(session, differences(session, annotations, task_ids, report), "reconcile")
        crash_point("sync.recorded")
    report.applied = apply_pending(sessions, progress=progress)
    return report
