"""The model registry: candidate versions with metrics and lineage, gated promotion, rollback.

Checkpoints are model directories packed as deterministic tar archives in the blob store
(content-addressed, so the same weights are stored once); `fetch_model_dir` unpacks one into a
local cache. At most one version per kind is `promoted`; promotion retires the previous one and
rollback re-promotes the version promoted before it.

Gate: a candidate carries `eval_score` and `parent_eval_score`, both measured on the candidate's
own held-out set (the parent = the version promoted when training started). It is promoted only
if eval_score >= parent_eval_score - tolerance, no `guard_failures` were recorded by its run's
evaluation, and its checkpoint loads. Floor: a candidate whose run recorded a chance floor (`metrics.floor`, a
one-sided exact sign test over independent held-out units, trainers.reward.run.chance_floor) must beat chance at
`floor_alpha` (EDITLOOP_PROMOTION_FLOOR_ALPHA): a first version has no parent to compare with, and a reward
trained on too few or contrary labels would otherwise drive feedback learning the wrong way.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import ModelVersion
from editloop.models.card import has_card
from editloop.store.base import BlobStore, check_key

DEFAULT_TOLERANCE = 0.01
DEFAULT_FLOOR_ALPHA = 0.05


class PromotionRefused(ValueError):
    """The version may not be promoted; the message says why."""


def pack_model_dir(path: Path) -> bytes:
    """A deterministic tar of a model directory (sorted names, zeroed times and owners)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
            info = tarfile.TarInfo(str(f.relative_to(path)))
            data = f.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def store_model_dir(store: BlobStore, path: Path) -> str:
    return store.put(pack_model_dir(path), "application/x-tar")


def fetch_model_dir(store: BlobStore, key: str, cache_root: Path) -> Path:
    """The model directory stored under `key`, unpacked once into cache_root/<digest> (atomic rename)."""
    dest = cache_root / check_key(key).split(":", 1)[1][:32]
    if dest.is_dir():
        return dest
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=".unpack-"))
    with tarfile.open(fileobj=io.BytesIO(store.get(key)), mode="r") as tar:
        tar.extractall(tmp, filter="data")
    try:
        tmp.rename(dest)
    except OSError:  # another process unpacked it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def promoted(session: Session, kind: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.kind == kind,
                                                      ModelVersion.status == "promoted")).first()


def find_version(session: Session, kind: str, version: str) -> ModelVersion:
    row = session.scalars(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
                          ).one_or_none()
    if row is None:
        other = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
        if other is not None:
            raise PromotionRefused(f"version {version!r} is a {other.kind} model, not {kind}")
        raise PromotionRefused(f"no {kind} version {version!r} in the registry (see `editloop models show {kind}`)")
    return row


def register_candidate(session: Session, kind: str, name: str, version: str, checkpoint_key: str,
                       metrics: dict, config: dict, parent: ModelVersion | None) -> ModelVersion:
    """Add a candidate (idempotent on (name, version): a re-run of the same training returns the same row)."""
    row = session.scalars(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
                          ).one_or_none()
    if row is not None:
        return row
    row = ModelVersion(kind=kind, name=name, version=version, checkpoint_key=checkpoint_key, metrics=metrics,
                       config=config, parent_id=parent.id if parent else None, status="candidate")
    session.add(row)
    session.flush()
    return row


def floor_failure(metrics: dict, alpha: float, setting: str = "EDITLOOP_PROMOTION_FLOOR_ALPHA") -> str | None:
    """Why a version with a chance-floor record did not surely beat chance (p >= alpha), else None."""
    if not 0 < alpha <= 1:
        raise ValueError(f"`{setting}` must be in (0, 1] (1 turns the floor off), got {alpha}")
    floor = metrics.get("floor")
    if not floor or alpha >= 1:
        return None
    if floor["p_value"] < alpha:
        return None
    return (f"it does not surely beat chance on its held-out set: {floor['wins']} of {floor['units']} "
            f"{floor['unit']} right, one-sided sign test p = {floor['p_value']:.3g} (needs < {alpha}, "
            f"{setting}); a better model, or more held-out units (more labels), can pass it")


def gate(candidate: ModelVersion, tolerance: float = DEFAULT_TOLERANCE,
         floor_alpha: float = DEFAULT_FLOOR_ALPHA) -> str | None:
    """None if the candidate passes the gate, else the reason it does not."""
    score, parent_score = candidate.metrics.get("eval_score"), candidate.metrics.get("parent_eval_score")
    guards = candidate.metrics.get("guard_failures")
    if guards:  # the training run's own evaluation found it worse in some way the score does not show
        return "; ".join(guards)
    if score is None:
        return "the candidate has no eval_score"
    if why := floor_failure(candidate.metrics, floor_alpha):
        return why
    if parent_score is not None and score < parent_score - tolerance:
        return (f"held-out score {score:.4f} is below the promoted version's {parent_score:.4f} on the same "
                f"evaluation set minus the tolerance {tolerance}")
    return None


def promote(session: Session, kind: str, version: str, check: Callable[[ModelVersion], None] | None = None,
            tolerance: float = DEFAULT_TOLERANCE, force: bool = False,
            floor_alpha: float = DEFAULT_FLOOR_ALPHA) -> ModelVersion:
    """Promote `version` of `kind`; the previous promoted version is retired. The caller commits."""
    row = find_version(session, kind, version)
    if row.status == "promoted":
        return row
    if not force:
        why = gate(row, tolerance, floor_alpha)
        if why:
            raise PromotionRefused(f"{kind} {version} not promoted: {why}")
    if check is not None:
        try:
            check(row)
        except Exception as exc:  # any failure to load refuses the promotion
            raise PromotionRefused(f"{kind} {version} not promoted: its checkpoint does not load ({exc})") from exc
    current = promoted(session, kind)
    if current is not None:
        current.status = "retired"
    row.status, row.promoted_at = "promoted", datetime.now(UTC)
    session.flush()
    return row


def rollback(session: Session, kind: str, check: Callable[[ModelVersion], None] | None = None) -> ModelVersion:
    """Retire the promoted version of `kind` and promote the one promoted before it."""
    current = promoted(session, kind)
    if current is None:
        raise PromotionRefused(f"no promoted {kind} version to roll back")
    previous = session.scalars(select(ModelVersion).where(
        ModelVersion.kind == kind, ModelVersion.status == "retired", ModelVersion.promoted_at.is_not(None),
        ModelVersion.id != current.id).order_by(ModelVersion.promoted_at.desc())).first()
    if previous is None:
        raise PromotionRefused(f"{kind} {current.version} was the first promoted version; nothing to roll back to")
    if check is not None:
        check(previous)
    current.status, current.promoted_at = "retired", None  # rolled back: never a rollback target itself
    current.metrics = {**current.metrics, "rolled_back_at": datetime.now(UTC).isoformat()}
    previous.status = "promoted"  # keeps its promoted_at: the next rollback goes further back
    session.flush()
    return previous


def _load_editor(path: Path, kind: str) -> None:
    from editloop.models.zoo import load_pipeline

    load_pipeline(path, "inpaint", device="cpu", dtype="fp32")


def _load_instruct(path: Path, kind: str) -> None:
    from editloop.models.instruct import load_instruct_editor

    load_instruct_editor(path, device="cpu")


def _load_reward(path: Path, kind: str) -> None:
    from editloop.models.reward import load_reward

    load_reward(path, kind)


LOADERS: dict[str, Callable[[Path, str], None]] = {"editor": _load_editor, "instruct": _load_instruct}


def load_check(kind: str, store: BlobStore, cache: Path) -> Callable[[ModelVersion], None] | None:
    """A check for `promote`: a version's checkpoint unpacks and loads as a model of `kind` (an editor: an
    inpainting pipeline; instruct: an instruction editor; a reward kind: that reward). None for kinds without a
    loader (the base models, which are not promoted through the registry)."""
    from editloop.models.reward_kinds import kind_names

    loader = LOADERS.get(kind) or (_load_reward if kind in kind_names() else None)
    if loader is None:
        return None

    def check(row: ModelVersion) -> None:
        loader(fetch_model_dir(store, row.checkpoint_key, cache), kind)

    return check


def editor_model_dir(session: Session, store: BlobStore, base_dir: Path, cache_root: Path,
                     version: str | None = None) -> tuple[str, str, Path, int | None]:
    """(name, version, directory, registry id) of the editor to use: editor `version` if given, else the
    promoted editor (a feedback-learning result), else the base inpainting model at `base_dir` (id None)."""
    from editloop.models.model_dir import model_version

    row = find_version(session, "editor", version) if version else promoted(session, "editor")
    if row is not None:
        return "editor", row.version, fetch_model_dir(store, row.checkpoint_key, cache_root), row.id
    return "base-inpaint", model_version(base_dir), base_dir, None


def instruct_model_dir(session: Session, store: BlobStore, default_dir: Path, cache_root: Path,
                       version: str | None = None) -> tuple[str, str, Path, int | None] | None:
    """(name, version, directory, registry id) of the instruction editor to use: `version` if given, else the
    promoted instruct version (an alignment round's result), else the committed default at `default_dir`
    (id None); None when there is none at all."""
    from editloop.models.model_dir import model_version

    row = find_version(session, "instruct", version) if version else promoted(session, "instruct")
    if row is not None:
        return "instruct", row.version, fetch_model_dir(store, row.checkpoint_key, cache_root), row.id
    if has_card(default_dir):
        return "default-instruct", model_version(default_dir), default_dir, None
    return None
