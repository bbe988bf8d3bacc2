"""Records generations from a service (blob store + database) off the event loop."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from editloop.records import record_generation
from editloop.store.base import BlobStore
from services.core.errors import Unavailable
from services.core.sampling import Sampling

log = logging.getLogger("editloop.services")


class Recorder:
    def __init__(self, sessions: sessionmaker[Session], store: BlobStore) -> None:
        self.sessions = sessions
        self.store = store

    def _record(self, kind: str, prompt: str, pngs: list[bytes], shape: tuple[int, int], name: str,
                version: str, s: Sampling, source_png: bytes | None, mask_png: bytes | None) -> tuple[str, list[str]]:
        try:
            with self.sessions.begin() as session:  # one transaction: all rows or none
                gen, keys = record_generation(
                    session, self.store, kind=kind, prompt=prompt, pngs=pngs, shape=shape, model_name=name,
                    model_version=version, steps=s.steps, guidance=s.guidance, seed=s.seed, scheduler=s.scheduler,
                    source_png=source_png, mask_png=mask_png,
                )
                return gen.id, keys
        except (OperationalError, InterfaceError) as exc:  # the database is down or restarting: say so
            log.warning("recording failed: the database cannot be reached (%s)", type(exc.orig or exc).__name__)
            raise Unavailable(f"the database cannot be reached to record the result "
                              f"({type(exc.orig or exc).__name__}); nothing was recorded: try again, or send "
                              f"record=false") from None

    async def record(self, kind: str, prompt: str, pngs: list[bytes], shape: tuple[int, int], name: str,
                     version: str, s: Sampling, source_png: bytes | None = None,
                     mask_png: bytes | None = None) -> tuple[str, list[str]]:
        return await asyncio.to_thread(self._record, kind, prompt, pngs, shape, name, version, s,
                                       source_png, mask_png)
