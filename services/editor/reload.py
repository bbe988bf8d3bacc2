"""The editor service's models, hot-reloaded (services.core.reload): the promoted `editor` version (feedback
learning) for Inpaint / Outpaint / Erase and the promoted `instruct` version (SeedEdit) for Edit."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from editloop.registry import editor_model_dir, instruct_model_dir
from editloop.settings import Settings
from editloop.store.base import BlobStore
from services.core.reload import RegistryWatcher
from services.editor.core import EditorCore
from services.editor.instruct import InstructCore


def resolve_editor(settings: Settings, sessions: sessionmaker[Session], store: BlobStore) -> tuple[str, str, Path]:
    """(version, name, directory): the promoted editor version, else the base inpainting model."""
    with sessions() as s:
        name, version, path, _ = editor_model_dir(s, store, settings.editor_model, settings.state_dir / "models")
    return version, name, path


def resolve_instruct(settings: Settings, sessions: sessionmaker[Session],
                     store: BlobStore) -> tuple[str, str, Path] | None:
    """(version, name, directory): the promoted instruct version, else the committed default; None if neither."""
    with sessions() as s:
        found = instruct_model_dir(s, store, settings.instruct_model, settings.state_dir / "models")
    if found is None:
        return None
    name, version, path, _ = found
    return version, name, path


def load_editor(settings: Settings, version: str, name: str, path: Path) -> EditorCore:
    core = EditorCore(path, device=settings.device, name=name)
    core.version = version
    return core


def load_instruct(settings: Settings, version: str, name: str, path: Path) -> InstructCore:
    return InstructCore(path, device=settings.device, name=name, version=version)


def editor_watchers(editors, instructs, settings: Settings, sessions: sessionmaker[Session],
                    store: BlobStore, watch_editor: bool) -> list[RegistryWatcher]:
    """Watchers swapping newly promoted versions into the holders (the inpainting one only when the server
    was not started on an explicit model directory)."""
    interval = settings.reload_interval_s
    out = [RegistryWatcher(instructs, "instruct editor", lambda: resolve_instruct(settings, sessions, store),
                           lambda *found: load_instruct(settings, *found), interval)]
    if watch_editor:
        out.append(RegistryWatcher(editors, "editor", lambda: resolve_editor(settings, sessions, store),
                                   lambda *found: load_editor(settings, *found), interval))
    return out
