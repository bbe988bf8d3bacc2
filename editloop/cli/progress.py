"""Progress a person can see: a bar (done of N, rate, ETA) for a training run or a batch of queue work."""

from __future__ import annotations

import time
from typing import Any

ENDED = ("succeeded", "failed", "cancelled")


def _interval() -> float:
    """A bar redraws often on a terminal, and writes a line every 30 s into a log."""
    import sys

    return 0.5 if sys.stderr.isatty() else 30.0


def follow_run(sessions, run_id: str, label: str, timeout: float = 7200, poll: float = 1.0) -> dict[str, Any]:
    """Show run `run_id`'s progress as a bar until it ends; returns {status, outputs, error}. TimeoutError after
    `timeout` seconds (the run goes on)."""
    from tqdm import tqdm

    from editloop.db import TrainingRun

    deadline = time.monotonic() + timeout
    fmt = "{desc}: {percentage:3.0f}%|{bar:30}| [{elapsed}<{remaining}] {postfix}"
    with tqdm(total=100, desc=label, unit="%", mininterval=_interval(), bar_format=fmt) as bar:
        while True:
            with sessions() as s:
                run = s.get(TrainingRun, run_id)
                status, progress = (run.status, run.progress or 0.0) if run else ("queued", 0.0)
                outputs, error = (dict(run.outputs or {}), run.error) if run else ({}, None)
            bar.update(round(100 * progress, 1) - bar.n)
            last = outputs.get("last") or {}
            loss = last.get("loss")
            bar.set_postfix_str(status + (f", loss {loss:.3f}" if isinstance(loss, float) else ""), refresh=False)
            if status in ENDED:
                return {"status": status, "outputs": outputs, "error": error}
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f}s; `editloop status` follows it")
            time.sleep(poll)


def follow_task(result, label: str, total: int, timeout: float = 3600, poll: float = 0.5) -> Any:
    """Show a Celery task's PROGRESS meta ({"done", "total"}) as a bar until it ends; returns its result."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout
    with tqdm(total=total, desc=label, unit="set", mininterval=_interval()) as bar:
        while not result.ready():
            info = result.info if result.state == "PROGRESS" else None
            if isinstance(info, dict):
                bar.update(int(info.get("done", 0)) - bar.n)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: task {result.id} not done after {timeout:.0f}s")
            time.sleep(poll)
        value = result.get(timeout=10)
        bar.update(total - bar.n)
    return value
