"""A model directory's card, `editloop.json`: the one place that reads and writes it.

What it holds: `kind` (a reward kind, "editor", "instruct"), `version`, the sampling defaults a service uses when a
request leaves them unset (`default_steps`, `default_guidance`, `default_scheduler`: an 8-step model says 8), and
whatever lineage its writer adds (the run, the stage, `trained`). Reward, feedback and alignment runs write it; the
services, the trainers and the registry read it through these functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CARD = "editloop.json"


def card_path(model_dir: Path) -> Path:
    return Path(model_dir) / CARD


def has_card(model_dir: Path) -> bool:
    return card_path(model_dir).is_file()


def read_card(model_dir: Path) -> dict[str, Any]:
    """The card's fields; {} for a directory without one (a plain diffusers model)."""
    path = card_path(model_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_card(model_dir: Path, fields: dict[str, Any]) -> None:
    path = card_path(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields, indent=2))


@dataclass(frozen=True)
class SamplingDefaults:
    """What a service samples with when a request leaves steps, guidance or the scheduler unset."""

    steps: int = 20
    guidance: float = 4.0
    scheduler: str = "ddim"

    @classmethod
    def from_dir(cls, model_dir: Path) -> SamplingDefaults:
        card = read_card(model_dir)
        return cls(int(card.get("default_steps", 20)), float(card.get("default_guidance", 4.0)),
                   str(card.get("default_scheduler", "ddim")))
