"""The promoted reward model, hot-reloaded (services.core.reload): every response names the version that
actually scored it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from editloop.models.card import has_card
from editloop.registry import fetch_model_dir, promoted
from editloop.settings import Settings
from editloop.store.base import BlobStore
from services.core.reload import RegistryWatcher
from services.reward.core import RewardCore, ScoreItem


class CoreHolder:
    """The current RewardCore; `run` is what the batcher calls."""

    def __init__(self, core: RewardCore) -> None:
        self.core = core

    def run(self, batches: list[list[ScoreItem]], on_step: Callable[[int, int], None]) -> list[tuple[np.ndarray, str]]:
        core = self.core  # this batch is scored by one version, whatever is promoted meanwhile
        return [(scores, core.version) for scores in core.run(batches, on_step)]


def promoted_model_dir(sessions: sessionmaker[Session], store: BlobStore, kind: str, cache: Path) -> tuple[str, Path]:
    """(version, local directory) of the promoted `kind` model. Raises FileNotFoundError if none."""
    with sessions() as s:
        row = promoted(s, kind)
        if row is None:
            raise FileNotFoundError(f"no promoted {kind} reward model in the registry; train one "
                                    f"(`editloop train reward --kind {kind}`) or pass --model DIR")
        version, key = row.version, row.checkpoint_key
    return version, fetch_model_dir(store, key, cache)


INITIAL_VERSION = "initial-untrained"


def initial_model_dir(kind: str, cache: Path) -> tuple[str, Path]:
    """(version, directory) of the reward served while no `kind` version is promoted: an UNTRAINED model built
    from the tiny config with seed 0, marked as such in its version ("initial-untrained") and its editloop.json
    (`trained: false`). It is never registered, so no gate ever compares with it; the first promoted version
    replaces it through the watcher."""
    from editloop.models.reward import save_reward, tiny_reward

    path = cache / f"initial-{kind}"
    if not has_card(path):
        tmp = cache / f".initial-{kind}.{id(path)}.tmp"
        save_reward(tiny_reward(kind, 0), kind, tmp, version=INITIAL_VERSION, extra={"trained": False})
        try:
            tmp.replace(path)
        except OSError:  # another process made it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return INITIAL_VERSION, path


def served_model_dir(sessions: sessionmaker[Session], store: BlobStore, kind: str, cache: Path
                     ) -> tuple[str, Path]:
    """The promoted `kind` version when there is one that can be fetched, else the initial untrained model."""
    import logging

    try:
        return promoted_model_dir(sessions, store, kind, cache)
    except FileNotFoundError as exc:
        logging.getLogger("editloop.services").warning("%s; serving the initial UNTRAINED %s reward until a version "
                                                       "is promoted", exc, kind)
    return initial_model_dir(kind, cache)


def reward_watcher(holder: CoreHolder, kind: str, settings: Settings, sessions: sessionmaker[Session],
                   store: BlobStore, interval: float) -> RegistryWatcher:
    """Watch the registry for a newly promoted `kind` reward version and swap it into `holder`."""
    cache = settings.state_dir / "models"

    def resolve() -> tuple[str, Path] | None:
        try:
            return promoted_model_dir(sessions, store, kind, cache)
        except FileNotFoundError:
            return None

    def load(version: str, path: Path) -> RewardCore:
        core = RewardCore(path, kind, device=settings.device)
        core.version = version
        return core

    return RegistryWatcher(holder, f"{kind} reward", resolve, load, interval)
