"""The platform's persistent state as one process opens it: the database (migrated to head) and the blob store."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from editloop.db.session import make_engine, make_sessionmaker, upgrade
from editloop.settings import Settings
from editloop.store import open_store
from editloop.store.base import BlobStore


def open_sessions(settings: Settings) -> sessionmaker[Session]:
    """Migrate the configured database to head (safe when processes start together) and open it."""
    url = settings.resolved_database_url()
    upgrade(url)
    return make_sessionmaker(make_engine(url))


def open_state(settings: Settings) -> tuple[sessionmaker[Session], BlobStore]:
    return open_sessions(settings), open_store(settings)
