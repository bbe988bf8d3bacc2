"""Hot reload of a service's model: a watcher polls the registry and swaps in a newly promoted version
without failing a request in flight.

Each batch takes the core that is current when the batch starts and keeps it to the end, so a swap
between batches is atomic from a request's point of view, and every response names the version that
actually produced it. A version that fails to load is logged and skipped; the old one serves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("editloop.services.reload")


class Holder:
    """The current core of a service. `run` (what the batcher calls) returns, per job, the outputs with the
    name and version of the core that made them."""

    def __init__(self, core: Any | None) -> None:
        self.core = core  # None: nothing to serve yet (a watcher may load one later)

    def run(self, jobs: list[Any], on_step: Callable[[int, int], None]) -> list[tuple[Any, str, str]]:
        core = self.core  # this batch is served by one version, whatever is promoted meanwhile
        return [(out, core.name, core.version) for out in core.run(jobs, on_step)]


class RegistryWatcher:
    """Every `interval` seconds: `resolve()` -> (version, ...) of the promoted model, e.g. (version,
    directory), or None if there is none; when the version differs from the holder's, `load(*resolved)`
    and swap the new core in."""

    def __init__(self, holder: Any, label: str, resolve: Callable[[], tuple | None], load: Callable[..., Any],
                 interval: float) -> None:
        self.holder, self.label, self.resolve, self.load, self.interval = holder, label, resolve, load, interval
        self.swaps = 0
        self.on_swap: Callable[[], None] | None = None  # e.g. rewrite the served-models record
        self._task: asyncio.Task | None = None

    def check_once(self) -> bool:
        """Load and swap in the promoted version if it changed; True if it swapped. Runs in a thread."""
        found = self.resolve()
        if found is None or found[0] == getattr(self.holder.core, "version", None):
            return False
        version = found[0]
        try:
            core = self.load(*found)
        except Exception as exc:  # keep serving the loaded version
            log.error("promoted %s version %s does not load (%s); still serving %s", self.label, version, exc,
                      getattr(self.holder.core, "version", None))
            return False
        self.holder.core = core
        self.swaps += 1
        log.info("now serving %s version %s", self.label, version)
        if self.on_swap is not None:
            self.on_swap()
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.check_once)
            except Exception:  # a database hiccup must not stop the watcher
                log.exception("registry check failed (%s)", self.label)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


def write_served(path: Path, served: dict[str, Any]) -> None:
    """Record what a service serves now ({label: {"name", "version"}}) for `editloop status`; atomic."""
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(served))
    tmp.replace(path)
