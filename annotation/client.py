"""Talking to Label Studio through label-studio-sdk 2.x: projects (with their webhook), tasks, annotations.

Every call goes through `retrying`: connection errors, timeouts and 5xx answers are retried with
exponential backoff; 4xx answers are the caller's mistake and raise at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from annotation.configs import ProjectSpec
from annotation.server import LabelStudioInfo, label_studio_info
from editloop.settings import Settings

log = logging.getLogger("editloop.annotation")
T = TypeVar("T")
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]


class LabelStudioUnavailable(RuntimeError):
    """Label Studio did not answer after every retry."""


def retrying(call: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.5) -> T:
    for attempt in range(attempts):
        try:
            return call()
        except ApiError as exc:
            if exc.status_code is not None and exc.status_code < 500:
                raise
            error: Exception = exc
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            error = exc
        delay = base_delay * 2**attempt
        log.warning("%s failed (%s); retry %d/%d in %.1fs", what, error, attempt + 1, attempts - 1, delay)
        if attempt < attempts - 1:
            time.sleep(delay)
    raise LabelStudioUnavailable(f"{what}: Label Studio did not answer after {attempts} attempts ({error})")


def connect(url: str, token: str, timeout: float = 60) -> LabelStudio:
    return LabelStudio(base_url=url, api_key=token, timeout=timeout)


def connect_from_state(settings: Settings) -> tuple[LabelStudio, LabelStudioInfo]:
    """The Label Studio that `editloop annotation up` started (its URL and token are in the state dir)."""
    info = label_studio_info(settings)
    return connect(info.url, info.token), info


def find_project(ls: LabelStudio, title: str) -> int | None:
    found = retrying(lambda: [p.id for p in ls.projects.list(title=title) if p.title == title], "list projects")
    return min(found) if found else None


def ensure_project(ls: LabelStudio, spec: ProjectSpec, overlap: int, webhook_url: str | None = None,
                   webhook_token: str | None = None) -> int:
    """The project for `spec` (created once, its config validated by Label Studio); overlap kept current."""
    if overlap < 1:
        raise ValueError(f"`overlap` must be >= 1, got {overlap}")
    project_id = find_project(ls, spec.title)
    if project_id is None:
        project = retrying(lambda: ls.projects.create(
            title=spec.title, label_config=spec.label_config(), expert_instruction=spec.instructions,
            show_instruction=True, show_skip_button=True, maximum_annotations=overlap,
            sampling="Sequential sampling"), f"create project {spec.title!r}")
        project_id = project.id
    else:
        retrying(lambda: ls.projects.update(id=project_id, maximum_annotations=overlap), "update project")
    if webhook_url:
        ensure_webhook(ls, project_id, webhook_url, webhook_token or "")
    return project_id


def ensure_webhook(ls: LabelStudio, project_id: int, url: str, token: str) -> None:
    hooks = retrying(lambda: list(ls.webhooks.list(project=project_id)), "list webhooks")
    if any(h.url == url and h.project == project_id for h in hooks):
        return
    retrying(lambda: ls.webhooks.create(url=url, project=project_id, send_payload=True, send_for_all_actions=False,
                                        actions=WEBHOOK_ACTIONS, headers={"X-Editloop-Token": token},
                                        is_active=True), "create webhook")


def iter_tasks(ls: LabelStudio, project_id: int) -> Iterator[Any]:
    """Every task of a project with its annotations (paged by the SDK)."""
    tasks = retrying(lambda: list(ls.tasks.list(project=project_id, fields="all")), f"list tasks of {project_id}")
    yield from tasks


def annotation_dicts(task: Any) -> list[dict[str, Any]]:
    out = []
    for a in task.annotations or []:
        item = dict(a) if isinstance(a, dict) else a.dict()
        item.setdefault("task", task.id)
        out.append(item)
    return out
