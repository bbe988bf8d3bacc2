"""The sync's durable log: webhook payloads and reconciler observations become `LabelEvent` rows.

Recording only writes events (deduplicated by fingerprint, so a replayed webhook is a no-op);
`editloop.labels.apply` turns pending events into preference rows later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import LabelEvent

WEBHOOK_UPSERTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
WEBHOOK_DELETES = ("ANNOTATIONS_DELETED",)


class BadPayload(ValueError):
    """A webhook payload that is not what Label Studio sends; the message names the field."""


@dataclass(frozen=True)
class EventIn:
    action: str  # upsert | delete
    annotation_id: int
    task_id: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        body = json.dumps([self.action, self.annotation_id, self.payload.get("updated_at"),
                           self.payload.get("result"), self.payload.get("was_cancelled")], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()


def parse_time(value: Any) -> datetime | None:
    """Label Studio's ISO-8601 timestamps, always timezone-aware (UTC if the string has no zone)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        stamp = value
    else:
        try:
            stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise BadPayload(f"`updated_at` is not an ISO-8601 time: {value!r}") from exc
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, dict):  # Label Studio sometimes nests {"id": ...}
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadPayload(f"`{where}.{key}` must be an integer id, got {value!r}")
    return value


def event_from_annotation(annotation: Any, where: str = "annotation") -> EventIn:
    """An upsert event from an annotation as the API or a webhook shows it."""
    if not isinstance(annotation, dict):
        raise BadPayload(f"`{where}` must be an object, got {type(annotation).__name__}")
    annotation_id = _int(annotation, "id", where)
    task_id = _int(annotation, "task", where)
    completed_by = annotation.get("completed_by")
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id")
    updated = parse_time(annotation.get("updated_at") or annotation.get("created_at"))
    payload = {
        "result": annotation.get("result"),
        "was_cancelled": bool(annotation.get("was_cancelled", False)),
        "completed_by": completed_by,
        "updated_at": updated.isoformat() if updated else None,
    }
    return EventIn("upsert", annotation_id, task_id, payload)


def events_from_webhook(body: Any) -> list[EventIn]:
    """The events one webhook delivery carries; other actions carry none. Raises BadPayload."""
    if not isinstance(body, dict):
        raise BadPayload(f"webhook body must be a JSON object, got {type(body).__name__}")
    action = body.get("action")
    if not isinstance(action, str):
        raise BadPayload(f"`action` must be a string, got {action!r}")
    if action in WEBHOOK_UPSERTS:
        annotations = body.get("annotation")
        items = annotations if isinstance(annotations, list) else [annotations]
        return [event_from_annotation(a, "annotation") for a in items]
    if action in WEBHOOK_DELETES:
        annotations = body.get("annotations")
        if not isinstance(annotations, list):
            raise BadPayload(f"`annotations` must be a list for {action}, got {annotations!r}")
        return [delete_event(_int(a, "id", "annotations[]") if isinstance(a, dict) else -1) for a in annotations]
    return []


def delete_event(annotation_id: int) -> EventIn:
    if annotation_id < 0:
        raise BadPayload("`annotations[]` items must be objects with an integer `id`")
    return EventIn("delete", annotation_id, None, {})


def record_events(session: Session, events: list[EventIn], source: str) -> int:
    """Insert the events not seen before (by fingerprint); returns how many were new. The caller commits."""
    if not events:
        return 0
    prints = {e.fingerprint: e for e in events}
    seen = set(session.scalars(select(LabelEvent.fingerprint).where(LabelEvent.fingerprint.in_(list(prints)))))
    new = [e for fp, e in prints.items() if fp not in seen]
    session.add_all(LabelEvent(source=source, action=e.action, ls_annotation_id=e.annotation_id,
                               ls_task_id=e.task_id, payload=e.payload, fingerprint=e.fingerprint) for e in new)
    return len(new)
