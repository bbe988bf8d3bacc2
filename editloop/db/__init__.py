"""Database: SQLAlchemy 2 typed models, Alembic migrations, session factory."""

from editloop.db.models import (
    ApiToken,
    Base,
    CandidateItem,
    CandidateSet,
    Comparison,
    ComparisonPair,
    Generation,
    GenerationImage,
    GoldAnswer,
    ImageRecord,
    LabelEvent,
    LabelTask,
    LoopState,
    ModelVersion,
    Preference,
    Prompt,
    TrainingRun,
)
from editloop.db.session import make_engine, make_sessionmaker, upgrade

__all__ = [
    "ApiToken", "Base", "CandidateItem", "CandidateSet", "Comparison", "ComparisonPair", "Generation",
    "GenerationImage", "GoldAnswer", "ImageRecord", "LabelEvent", "LabelTask", "LoopState", "ModelVersion",
    "Preference", "Prompt", "TrainingRun", "make_engine", "make_sessionmaker", "upgrade",
]
