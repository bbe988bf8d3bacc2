"""Atomic, resumable training checkpoints (state dicts + resolved config + step)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: Any) -> None:
    """Write to a temporary file, fsync, then rename: a crash never leaves a half checkpoint, and a failed write
    (a full disk: ENOSPC) removes its temporary file and leaves the previous checkpoint as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except RuntimeError as exc:  # torch's zip writer hides a failed write ("unexpected pos"): say the real cause
        tmp.unlink(missing_ok=True)
        if isinstance(exc.__context__, OSError):
            raise exc.__context__ from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
