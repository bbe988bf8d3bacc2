"""The promoted reward model, hot-reloaded: a watcher polls the registry and swaps in a newly promoted
version without failing a request in flight.

Each batch takes the core that is current when the batch starts and keeps it to the end, so a swap
between batches is atomic from a request's point of view, and every response names the version
that actually scored it. A version that fails to load is logged and skipped; the old one serves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from editloop.registry import fetch_model_dir, promoted
from editloop.settings import Settings
from editloop.store.base import BlobStore
from services.reward.core import RewardCore, ScoreItem

log = logging.getLogger("editloop.services.reward")


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


class RegistryWatcher:
    def __init__(self, holder: CoreHolder, kind: str, settings: Settings, sessions: sessionmaker[Session],
                 store: BlobStore, interval: float) -> None:
        self.holder, self.kind, self.settings = holder, kind, settings
        self.sessions, self.store, self.interval = sessions, store, interval
        self.swaps = 0
        self._task: asyncio.Task | None = None

    def check_once(self) -> bool:
        """Load and swap in the promoted version if it changed; True if it swapped. Runs in a thread."""
        try:
            version, path = promoted_model_dir(self.sessions, self.store, self.kind, self.settings.state_dir / "models")
        except FileNotFoundError:
            return False
        if version == self.holder.core.version:
            return False
        try:
            core = RewardCore(path, self.kind, device=self.settings.device)
        except Exception as exc:  # noqa: BLE001 - keep serving the loaded version
            log.error("promoted %s version %s does not load (%s); still serving %s", self.kind, version, exc,
                      self.holder.core.version)
            return False
        core.version = version
        self.holder.core = core
        self.swaps += 1
        log.info("now serving %s reward version %s", self.kind, version)
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.check_once)
            except Exception:  # noqa: BLE001 - a database hiccup must not stop the watcher
                log.exception("registry check failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
