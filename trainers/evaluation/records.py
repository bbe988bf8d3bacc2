"""Evaluations stored with the version they measured: a row in `evaluations` (editloop.db.models.Evaluation) and a
JSON file under <state_dir>/evals/, plus a labelled grid of the first outputs in the blob store."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import Evaluation
from editloop.store.base import BlobStore

GRID_ITEMS = 8


def finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as None (JSON and PostgreSQL's json hold no NaN), numpy scalars as Python's."""
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def samples_grid(items: list, outputs: np.ndarray, label: str) -> bytes:
    """A labelled PNG of the first GRID_ITEMS items: the source (edit region dimmed) over the output, each column
    captioned with what its item asked."""
    from editloop.world.io import save_grid_png

    part = items[:GRID_ITEMS]
    sources = [it.source if it.mask is None else np.where(it.mask[..., None] > 0, it.source // 2, it.source)
               for it in part]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.png"
        save_grid_png([sources, list(outputs[:GRID_ITEMS])], path, ["source (edit region dimmed)", label],
                      [it.instruction if it.task == "" else f"{it.task}, prompt: {it.instruction}" for it in part])
        return path.read_bytes()


def json_path(state_dir: Path, row: Evaluation) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", row.version)[:64]
    return state_dir / "evals" / f"{row.id:05d}-{row.subject}-{safe}.json"


def as_dict(row: Evaluation) -> dict:
    return {"id": row.id, "subject": row.subject, "model_kind": row.model_kind, "version": row.version,
            "model_version_id": row.model_version_id, "suite": row.suite, "config": row.config,
            "metrics": row.metrics, "per_item": row.per_item, "samples_key": row.samples_key,
            "created_at": row.created_at.isoformat() if row.created_at else None}


def save_evaluation(sessions: sessionmaker[Session], store: BlobStore, state_dir: Path, *, subject: str,
                    model_kind: str, version: str, model_version_id: int | None, suite: str, config: dict,
                    result: dict, grid: bytes | None = None) -> tuple[dict, Path]:
    """Store one evaluation; returns (its record, the JSON file written)."""
    samples_key = store.put(grid, "image/png") if grid else None
    with sessions.begin() as s:
        row = Evaluation(subject=subject, model_kind=model_kind, version=version, model_version_id=model_version_id,
                         suite=suite, config=finite(config), metrics=finite(result["metrics"]),
                         per_item=finite(result.get("per_item", {})), samples_key=samples_key)
        s.add(row)
        s.flush()
        record, path = as_dict(row), json_path(state_dir, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return record, path


def latest(session: Session, version: str, subject: str | None = None, suite: str | None = None
           ) -> Evaluation | None:
    """The newest evaluation of `version` (of `subject`, on `suite`, when given)."""
    q = select(Evaluation).where(Evaluation.version == version)
    if subject:
        q = q.where(Evaluation.subject == subject)
    if suite:
        q = q.where(Evaluation.suite == suite)
    return session.scalars(q.order_by(Evaluation.id.desc())).first()


def of_version(session: Session, version: str) -> list[Evaluation]:
    return list(session.scalars(select(Evaluation).where(Evaluation.version == version).order_by(Evaluation.id)))
