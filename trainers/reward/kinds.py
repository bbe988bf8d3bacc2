"""How each reward kind is trained and evaluated, looked up by name (one file per kind registers its trainer).

A kind's file (trainers/reward/aesthetic.py, alignment.py, coherence.py) defines its model-family entry in the
kernel (editloop/models/reward_kinds.py: built-in kinds are there already) and calls `register_trainer` with:
- `data(sessions, store, settings, cfg)`: {"train": ..., "select": ..., "eval": ..., "lineage": {...}} (the run
  records the lineage with the version; anything else the kind's functions need may ride along): "select" chooses
  the best checkpoint and "eval" gives the gate's score and the chance floor, so that score is not one chosen on;
- `train(model, tokenizer, data, cfg, run_dir, progress)`: a trainers.reward.loop.LoopResult (resumable: the
  loop checkpoints in run_dir), the best checkpoint by its score on data["select"];
- `evaluate(model, tokenizer, data)`: (the score the gate compares, every held-out metric);
- `floor(score, data, model)`: (wins, units, unit name): the independent held-out units the chance floor's sign
  test counts (trainers/reward/run.py chance_floor);
- `held_out(model, tokenizer, sessions, store, settings, n)`: `editloop eval reward`'s metrics (with "accuracy"
  or the kind's headline) on data no training run drew;
- `attach(data, store)` (optional): what a distributed job's processes re-attach to the pickled data.

Adding a kind: one new file doing both registrations, and its module's name in KIND_MODULES (or `add_module`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KIND_MODULES = ["trainers.reward.aesthetic", "trainers.reward.alignment", "trainers.reward.coherence"]


@dataclass(frozen=True)
class KindTrainer:
    name: str
    data: Callable[..., dict[str, Any]]
    train: Callable[..., Any]
    evaluate: Callable[..., tuple[float, dict[str, float]]]
    floor: Callable[..., tuple[int, int, str]]
    held_out: Callable[..., dict[str, Any]]
    attach: Callable[[dict, Any], dict] | None = None


_TRAINERS: dict[str, KindTrainer] = {}
_loaded: set[str] = set()


def register_trainer(trainer: KindTrainer) -> KindTrainer:
    from editloop.models.reward_kinds import reward_kind

    reward_kind(trainer.name)  # the kernel must know the kind (its model family) first
    _TRAINERS[trainer.name] = trainer
    return trainer


def _load_modules() -> None:
    for name in KIND_MODULES:
        if name not in _loaded:
            importlib.import_module(name)
            _loaded.add(name)


def add_module(name: str) -> None:
    """Register the kind(s) a module defines (what a line in KIND_MODULES does)."""
    if name not in KIND_MODULES:
        KIND_MODULES.append(name)
    _load_modules()


def remove_module(name: str, kinds: tuple[str, ...]) -> None:
    """Undo `add_module` for the `kinds` it registered (a test's toy kind, after the test)."""
    import sys

    from editloop.models.reward_kinds import unregister

    if name in KIND_MODULES:
        KIND_MODULES.remove(name)
    _loaded.discard(name)
    sys.modules.pop(name, None)  # a later add_module imports (and registers) it afresh
    for kind in kinds:
        _TRAINERS.pop(kind, None)
        unregister(kind)


def kind_trainer(name: str) -> KindTrainer:
    _load_modules()
    try:
        return _TRAINERS[name]
    except KeyError:
        raise ValueError(f"`kind` must be one of {list(_TRAINERS)}, got {name!r}") from None


def trainable_kinds() -> tuple[str, ...]:
    _load_modules()
    return tuple(_TRAINERS)
