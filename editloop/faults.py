"""Named crash points for testing "kill it anywhere and nothing is lost".

Code calls `crash_point("sync.applied")` at each stage boundary. Nothing happens unless a test
arms a point, in-process (`arm`) or for a child process through EDITLOOP_FAULT="stage:n[:kill]":
the n-th time that stage is reached the process raises `InjectedCrash`, or with `:kill` SIGKILLs
itself (no cleanup, no rollback handlers: what a power cut does).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_counts: Counter[str] = Counter()
_armed: dict[str, tuple[int, bool]] = {}


class InjectedCrash(RuntimeError):
    """Raised at an armed crash point."""


def arm(stage: str, at: int = 1, kill: bool = False) -> None:
    _armed[stage] = (at, kill)
    _counts[stage] = 0


def disarm() -> None:
    _armed.clear()
    _counts.clear()


def _from_env() -> None:
    spec = os.environ.get("EDITLOOP_FAULT", "")
    if spec and not _armed:
        parts = spec.split(":")
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"EDITLOOP_FAULT must look like 'stage:n[:kill]', got {spec!r}")
        arm(parts[0], int(parts[1]), kill=len(parts) > 2 and parts[2] == "kill")


def crash_point(stage: str) -> None:
    _from_env()
    if stage not in _armed:
        return
    _counts[stage] += 1
    at, kill = _armed[stage]
    if _counts[stage] == at:
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedCrash(f"injected crash at {stage} (#{at})")
