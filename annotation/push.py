"""Push candidate sets (best/worst) and comparison pairs (side by side) to Label Studio as tasks.

Idempotent: every task carries `external_key` ("cs:<id>" / "pair:<id>") in its data and has a
`label_tasks` row. Before importing, tasks that reached Label Studio but not the database (a push
that died between the two) are adopted from Label Studio, so pushing again never duplicates.
Images reach the browser through signed, expiring links (annotation/links.py).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from label_studio_sdk import LabelStudio
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from annotation.client import ensure_project, iter_tasks, retrying
from annotation.configs import MAX_CANDIDATES, ProjectSpec
from editloop.db.models import CandidateSet, ComparisonPair, ImageRecord, LabelTask
from editloop.faults import crash_point
from editloop.store.base import BlobStore
from editloop.world.io import from_png, mask_from_png, to_png


@dataclass
class PushReport:
    created: int = 0
    adopted: int = 0  # already in Label Studio from an interrupted push, recorded now
    already: int = 0
    projects: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """Where pushed tasks go: overlap (annotators per task) and the webhook to register."""

    overlap: int = 2
    batch_size: int = 50
    webhook_url: str | None = None
    webhook_token: str | None = None
    project_prefix: str = "editloop"


def overlay_png(source_png: bytes, mask_png: bytes, alpha: float = 0.45) -> bytes:
    """The source with the masked region tinted red: how the annotator sees where the edit goes."""
    image = from_png(source_png, "source", size=None).astype(np.float32)
    mask = mask_from_png(mask_png, size=image.shape[0]).astype(bool)
    image[mask] = (1 - alpha) * image[mask] + alpha * np.array([255.0, 0.0, 0.0])
    return to_png(image.round().astype(np.uint8))


def _spec_for(cs: CandidateSet, prefix: str) -> ProjectSpec:
    kind = {"t2i": "t2i", "instruct": "instruct"}.get(cs.kind, "edit")
    if len(cs.items) > MAX_CANDIDATES:
        raise ValueError(f"candidate set {cs.id} has {len(cs.items)} images; at most {MAX_CANDIDATES} can be shown")
    return ProjectSpec(kind, len(cs.items), prefix)


def candidate_task(cs: CandidateSet, session: Session, store: BlobStore, link: Callable[[str], str]) -> dict:
    data = {"external_key": f"cs:{cs.id}", "candidate_set_id": cs.id, "prompt": cs.prompt.text}
    for item in cs.items:
        data[f"img{item.position + 1}"] = link(item.image.blob_key)
    if cs.kind == "instruct" and cs.source_image_id is not None:
        data["source_image"] = link(session.get(ImageRecord, cs.source_image_id).blob_key)
    elif cs.kind != "t2i" and cs.source_image_id is not None and cs.mask_key:
        source = session.get(ImageRecord, cs.source_image_id)
        data["source_image"] = link(source.blob_key)
        overlay = overlay_png(store.get(source.blob_key), store.get(cs.mask_key))
        data["mask_overlay"] = link(store.put(overlay, "image/png"))
    return data


def pair_task(pair: ComparisonPair, store: BlobStore, link: Callable[[str], str]) -> tuple[dict, bool]:
    """Left/right order drawn per pair (seeded by its id, so a re-push shows the same order); a pair of edits
    also shows its source with the edited region over it."""
    swapped = swapped_for(f"pair:{pair.id}")
    left, right = (pair.b_image, pair.a_image) if swapped else (pair.a_image, pair.b_image)
    data = {"external_key": f"pair:{pair.id}", "pair_id": pair.id, "prompt": pair.prompt.text,
            "left": link(left.blob_key), "right": link(right.blob_key)}
    if pair.source_image is not None and pair.mask_key:
        data["source_image"] = link(pair.source_image.blob_key)
        overlay = overlay_png(store.get(pair.source_image.blob_key), store.get(pair.mask_key))
        data["mask_overlay"] = link(store.put(overlay, "image/png"))
    return data, swapped


def adopt_orphans(ls: LabelStudio, session: Session, project_id: int, kind: str) -> int:
    """Record tasks Label Studio holds for this project that the database does not know (a crashed push)."""
    known = set(session.scalars(select(LabelTask.ls_task_id).where(LabelTask.ls_project_id == project_id)))
    adopted = 0
    for task in iter_tasks(ls, project_id):
        key = (task.data or {}).get("external_key")
        if task.id in known or not isinstance(key, str):
            continue
        ref, _, raw_id = key.partition(":")
        if not raw_id.isdigit() or ref not in ("cs", "pair"):
            continue
        session.add(LabelTask(kind=kind, ls_project_id=project_id, ls_task_id=task.id, external_key=key,
                              candidate_set_id=int(raw_id) if ref == "cs" else None,
                              pair_id=int(raw_id) if ref == "pair" else None,
                              swapped=swapped_for(key) if ref == "pair" else False))
        adopted += 1
    return adopted


def swapped_for(external_key: str) -> bool:
    """Whether A is shown on the right: a fair coin seeded by the task's key (the same on every push)."""
    return random.Random(external_key).random() < 0.5


def _import(ls: LabelStudio, project_id: int, payloads: list[dict]) -> list[int]:
    response = retrying(lambda: ls.projects.import_tasks(id=project_id, request=payloads, return_task_ids=True),
                        f"import {len(payloads)} tasks")
    if not response.task_ids or len(response.task_ids) != len(payloads):
        raise RuntimeError(f"Label Studio returned {response.task_ids!r} for {len(payloads)} imported tasks")
    return list(response.task_ids)


def _push_group(ls: LabelStudio, sessions: sessionmaker[Session], project_id: int, kind: str,
                rows: list[tuple[str, dict, dict]], target: Target, report: PushReport) -> None:
    """rows: (external_key, task data, LabelTask fields). Adopt orphans, then import what is missing."""
    with sessions.begin() as session:
        report.adopted += adopt_orphans(ls, session, project_id, kind)
    with sessions() as session:
        present = set(session.scalars(select(LabelTask.external_key).where(LabelTask.ls_project_id == project_id)))
    todo = [r for r in rows if r[0] not in present]
    report.already += len(rows) - len(todo)
    for start in range(0, len(todo), target.batch_size):
        chunk = todo[start:start + target.batch_size]
        ids = _import(ls, project_id, [data for _, data, _ in chunk])
        crash_point("push.imported")  # Label Studio has them, the database not yet: adopt_orphans covers it
        with sessions.begin() as session:
            session.add_all(LabelTask(kind=kind, ls_project_id=project_id, ls_task_id=task_id, external_key=key,
                                      **fields) for (key, _, fields), task_id in zip(chunk, ids))
        report.created += len(chunk)


def push_candidate_sets(ls: LabelStudio, sessions: sessionmaker[Session], store: BlobStore,
                        link: Callable[[str], str], target: Target, ids: list[int] | None = None) -> PushReport:
    """Every candidate set (or those in `ids`) becomes one best/worst task; already pushed ones are skipped."""
    report = PushReport()
    groups: dict[ProjectSpec, list[tuple[str, dict, dict]]] = defaultdict(list)
    with sessions() as session:
        query = select(CandidateSet).options(selectinload(CandidateSet.items)).order_by(CandidateSet.id)
        if ids is not None:
            query = query.where(CandidateSet.id.in_(ids))
        for cs in session.scalars(query):
            data = candidate_task(cs, session, store, link)
            groups[_spec_for(cs, target.project_prefix)].append((f"cs:{cs.id}", data, {"candidate_set_id": cs.id}))
    for spec, rows in groups.items():
        project_id = ensure_project(ls, spec, target.overlap, target.webhook_url, target.webhook_token)
        report.projects[spec.title] = project_id
        _push_group(ls, sessions, project_id, "best_worst", rows, target, report)
    return report


def push_pairs(ls: LabelStudio, sessions: sessionmaker[Session], store: BlobStore, link: Callable[[str], str],
               target: Target, ids: list[int] | None = None) -> PushReport:
    """Every comparison pair (or those in `ids`) becomes one side-by-side task, order randomised and recorded;
    pairs of edits go to a project that shows each task's source and edited region."""
    report = PushReport()
    groups: dict[ProjectSpec, list[tuple[str, dict, dict]]] = defaultdict(list)
    with sessions() as session:
        query = select(ComparisonPair).order_by(ComparisonPair.id)
        if ids is not None:
            query = query.where(ComparisonPair.id.in_(ids))
        for pair in session.scalars(query):
            data, swapped = pair_task(pair, store, link)
            kind = "side_by_side_edit" if "source_image" in data else "side_by_side"
            groups[ProjectSpec(kind, prefix=target.project_prefix)].append(
                (data["external_key"], data, {"pair_id": pair.id, "swapped": swapped}))
    for spec, rows in groups.items():
        project_id = ensure_project(ls, spec, target.overlap, target.webhook_url, target.webhook_token)
        report.projects[spec.title] = project_id
        _push_group(ls, sessions, project_id, "side_by_side", rows, target, report)
    return report


def push_to_label_studio(settings, sessions: sessionmaker[Session], store: BlobStore,
                         ids: list[int] | None, overlap: int, batch_size: int = 50) -> PushReport:
    """Push candidate sets to the Label Studio this state dir runs (<state_dir>/label-studio.json), with the
    annotation endpoint's webhook and signed links: what `editloop annotation push` and the loop both do."""
    from annotation.client import connect_from_state
    from annotation.links import LinkMaker, webhook_token

    ls, _ = connect_from_state(settings)
    target = Target(overlap, batch_size, f"{settings.resolved_annotation_web_url()}/webhook",
                    webhook_token(settings), settings.annotation_project_prefix)
    return push_candidate_sets(ls, sessions, store, LinkMaker(settings, store), target, ids)
