"""SQLAlchemy 2 typed models: prompts, images, generations, candidate sets, preferences,
the model registry and training runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

GENERATION_KINDS = ("t2i", "inpaint", "outpaint", "erase", "edit")
MODEL_STATUSES = ("candidate", "promoted", "retired")
RUN_STATUSES = ("queued", "running", "succeeded", "failed")
PREFERENCE_STATUSES = ("valid", "invalid", "retired")
LABEL_TASK_KINDS = ("best_worst", "side_by_side")
VERDICTS = ("good", "same", "bad")  # side by side, from A's side


def _now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite gives back naive ones; every time here is written in UTC)."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _uuid() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON}


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ImageRecord(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(80), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Generation(Base):
    """One request to a generator or editor, with the model version and every sampling parameter."""

    __tablename__ = "generations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    kind: Mapped[str] = mapped_column(String(16))
    prompt_id: Mapped[int | None] = mapped_column(ForeignKey("prompts.id"))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    scheduler: Mapped[str] = mapped_column(String(16))
    source_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    mask_key: Mapped[str | None] = mapped_column(String(80))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    prompt: Mapped[Prompt | None] = relationship()
    images: Mapped[list[GenerationImage]] = relationship(order_by="GenerationImage.index",
                                                         cascade="all, delete-orphan")


class GenerationImage(Base):
    __tablename__ = "generation_images"
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    image: Mapped[ImageRecord] = relationship()


class CandidateSet(Base):
    """N images for one prompt, or one source + mask + N edits: what annotators label."""

    __tablename__ = "candidate_sets"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    source_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    mask_key: Mapped[str | None] = mapped_column(String(80))
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    prompt: Mapped[Prompt] = relationship()
    items: Mapped[list[CandidateItem]] = relationship(order_by="CandidateItem.position",
                                                      cascade="all, delete-orphan")


class GoldAnswer(Base):
    """A candidate set whose best/worst answer is known (set by an expert, or by the world's judge here): every
    label on it measures its annotator (`editloop annotation stats`). Annotators see it as any other set."""

    __tablename__ = "gold_answers"
    candidate_set_id: Mapped[int] = mapped_column(ForeignKey("candidate_sets.id"), primary_key=True)
    best_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    worst_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class CandidateItem(Base):
    __tablename__ = "candidate_items"
    candidate_set_id: Mapped[int] = mapped_column(ForeignKey("candidate_sets.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    image: Mapped[ImageRecord] = relationship()


class Preference(Base):
    """One best/worst answer (one Label Studio annotation); invalid ones are kept with a reason."""

    __tablename__ = "preferences"
    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_set_id: Mapped[int] = mapped_column(ForeignKey("candidate_sets.id"))
    best_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    worst_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    annotator: Mapped[str] = mapped_column(String(128))
    ls_task_id: Mapped[int | None] = mapped_column(Integer)
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    status: Mapped[str] = mapped_column(String(16), default="valid")
    reason: Mapped[str | None] = mapped_column(Text)
    ls_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # orders updates
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class ComparisonPair(Base):
    """Two images to compare side by side: A (the model under test) and B (the reference)."""

    __tablename__ = "comparison_pairs"

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    a_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    b_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    a_label: Mapped[str] = mapped_column(String(128))
    b_label: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    # a pair of edits: the image both were edited from and the edited region (shown to the reviewer)
    source_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    mask_key: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    prompt: Mapped[Prompt] = relationship()
    a_image: Mapped[ImageRecord] = relationship(foreign_keys=[a_image_id])
    b_image: Mapped[ImageRecord] = relationship(foreign_keys=[b_image_id])
    source_image: Mapped[ImageRecord | None] = relationship(foreign_keys=[source_image_id])


class Comparison(Base):
    """One Good/Same/Bad answer on a pair (one Label Studio annotation), verdict from A's side."""

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("comparison_pairs.id"))
    verdict: Mapped[str | None] = mapped_column(String(8))
    annotator: Mapped[str] = mapped_column(String(128))
    ls_task_id: Mapped[int | None] = mapped_column(Integer)
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    status: Mapped[str] = mapped_column(String(16), default="valid")
    reason: Mapped[str | None] = mapped_column(Text)
    ls_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class LabelTask(Base):
    """A Label Studio task made from a candidate set or a comparison pair: pushing twice finds this row."""

    __tablename__ = "label_tasks"
    __table_args__ = (UniqueConstraint("ls_project_id", "external_key", name="uq_label_tasks_project_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # best_worst | side_by_side
    ls_project_id: Mapped[int] = mapped_column(Integer)
    ls_task_id: Mapped[int] = mapped_column(Integer, unique=True)
    external_key: Mapped[str] = mapped_column(String(64))  # "cs:<id>" | "pair:<id>", also in the task's data
    candidate_set_id: Mapped[int | None] = mapped_column(ForeignKey("candidate_sets.id"))
    pair_id: Mapped[int | None] = mapped_column(ForeignKey("comparison_pairs.id"))
    swapped: Mapped[bool] = mapped_column(default=False)  # side by side: A shown on the right
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LabelEvent(Base):
    """A webhook delivery or a reconciler observation, stored before it is applied: the sync's durable log.

    `fingerprint` (action, annotation id, its updated_at and result) makes replays no-ops;
    `applied_at` is set in the same transaction that writes the preference row.
    """

    __tablename__ = "label_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # webhook | reconcile
    action: Mapped[str] = mapped_column(String(16))  # upsert | delete
    ls_annotation_id: Mapped[int] = mapped_column(Integer, index=True)
    ls_task_id: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    outcome: Mapped[str | None] = mapped_column(Text)


class ModelVersion(Base):
    """The registry: every trained or imported model version with lineage, config and metrics."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # t2i | inpaint | editor | aesthetic | alignment | coherence
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    checkpoint_key: Mapped[str | None] = mapped_column(String(200))  # blob key or a path
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # last promotion (rollback order)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    task_id: Mapped[str | None] = mapped_column(String(64))
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class LoopState(Base):
    """The automatic loop's switch (one row per loop, e.g. "feedback"): paused by a person, with who and why."""

    __tablename__ = "loop_state"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class ApiToken(Base):
    """A client token for the gRPC services (`editloop auth`): only its SHA-256 is stored; the token itself is
    printed once, when it is made."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(128))  # comma-separated: generate, edit, score, admin
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RunFile(Base):
    """A file of a training run's directory (checkpoints, best weights, history) mirrored into the blob store, so a
    run whose host is gone resumes on another from its last checkpoint (trainers/run_mirror.py)."""

    __tablename__ = "run_files"
    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(80))  # the blob's content address
    size: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class Evaluation(Base):
    """One `editloop eval` of a version on a named suite (trainers/evaluation): its summary, its per-item verdicts
    (what `eval compare` pairs up), the sampling config and a grid of its first outputs in the blob store."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(16))  # editor | instruct | reward | reward-drift
    model_kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))  # None: a base model
    suite: Mapped[str] = mapped_column(String(300))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    per_item: Mapped[dict[str, Any]] = mapped_column(default=dict)
    samples_key: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
