"""Dynamic batching: requests with the same batch key are run together.

A single worker task drains the queue: it waits up to `max_delay` for up to `max_batch`
compatible items, runs them in one call (in a thread, so the event loop keeps serving), and
resolves each item's future. A full queue answers RESOURCE_EXHAUSTED at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from services.core import metrics
from services.core.errors import Cancelled, ResourceExhausted


@dataclass
class Item:
    payload: Any
    key: Hashable
    size: int = 1  # images (or rows) this item contributes to the batch
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    progress: asyncio.Queue | None = None  # receives (step, total) when the caller streams progress
    cancelled: bool = False
    enqueued: float = field(default_factory=time.perf_counter)


def split_per_job(flat: list[Any], sizes: list[int]) -> list[list[Any]]:
    """Cut one batch's outputs back into each job's share, in order."""
    out, start = [], 0
    for n in sizes:
        out.append(flat[start : start + n])
        start += n
    return out


class DynamicBatcher:
    def __init__(self, name: str, run: Callable[[list[Any], Callable[[int, int], None]], list[Any]],
                 max_batch: int = 32, max_delay: float = 0.005, max_queue: int = 256) -> None:
        self.name = name
        self.run = run
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self._pending: list[Item] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(Cancelled("the service is stopping"))
        self._pending.clear()

    @property
    def depth(self) -> int:
        return sum(i.size for i in self._pending)

    async def submit(self, payload: Any, key: Hashable, size: int = 1,
                     progress: asyncio.Queue | None = None) -> Any:
        if self.depth + size > self.max_queue:
            raise ResourceExhausted(
                f"{self.name} queue is full ({self.depth} queued, limit {self.max_queue}); retry later"
            )
        item = Item(payload, key, size, progress=progress)
        self._pending.append(item)
        metrics.QUEUE_DEPTH.labels(self.name).set(self.depth)
        self._wakeup.set()
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            item.cancelled = True  # the client went away: skip it, or stop the batch it is in
            raise

    def _take_batch(self) -> list[Item]:
        self._pending = [i for i in self._pending if not i.cancelled]
        if not self._pending:
            return []
        key = self._pending[0].key
        batch, rest, total = [], [], 0
        for item in self._pending:
            if item.key == key and total + item.size <= max(self.max_batch, self._pending[0].size):
                batch.append(item)
                total += item.size
            else:
                rest.append(item)
        self._pending = rest
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # give compatible requests `max_delay` to arrive, unless the batch is already full
            deadline = self._pending[0].enqueued + self.max_delay if self._pending else 0
            while self.depth < self.max_batch and time.perf_counter() < deadline:
                await asyncio.sleep(min(0.001, max(deadline - time.perf_counter(), 0)))
            batch = self._take_batch()
            metrics.QUEUE_DEPTH.labels(self.name).set(self.depth)
            if not batch:
                continue
            metrics.BATCH_SIZE.labels(self.name).observe(sum(i.size for i in batch))

            def on_step(step: int, total: int, batch: list[Item] = batch) -> None:
                if all(i.cancelled for i in batch):
                    raise Cancelled("every request in the batch was cancelled")
                for i in batch:
                    if i.progress is not None:
                        loop.call_soon_threadsafe(i.progress.put_nowait, (step, total))

            try:
                results = await asyncio.to_thread(self.run, [i.payload for i in batch], on_step)
            except BaseException as exc:  # every waiter must learn the outcome
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for i, result in zip(batch, results):
                if not i.future.done():
                    i.future.set_result(result)
