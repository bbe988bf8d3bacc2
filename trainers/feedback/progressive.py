"""Progressive acceleration (ByteEdit's Accelerate): the feedback objective at phase 1 (T, T1, T2) =
(20, 15, 10), then phase 2 = (8, 6, 3) starting from phase 1's parameters. The phase-2 model is
trained for 8 sampling steps with "trailing" timesteps (the first at t = 999, where sampling's pure noise
belongs; Stable Diffusion's "leading" spacing starts 8 steps at t = 876: measured in bench/step_spacing.py),
records that in its editloop.json (`default_steps`) and scheduler config, and the editor service samples it
at 8 steps unless a request says otherwise.

The stage presets live here too: which rewards, which schedule, whether the coherence critic trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainers.feedback.adversarial import AdversarialConfig
from trainers.feedback.grpo import GrpoConfig
from trainers.feedback.loop import FeedbackConfig
from trainers.feedback.pefl import PeflSchedule

PHASE_1 = PeflSchedule(20, 15, 10)
PHASE_2 = PeflSchedule(8, 6, 3)


# The training stages, looked up by name: each one's preset (FeedbackConfig fields; a run's overrides apply on top).
# A feedback-lifecycle run trains one of them (trainers/feedback/run.py); the step it takes is PeFL's (pefl,
# adversarial, progressive), Diffusion-DPO's (dpo.py) or GRPO's (grpo.py).
STAGE_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {
    "pefl": lambda: {"schedule": PHASE_1},
    "adversarial": lambda: {"schedule": PHASE_1, "adversarial": AdversarialConfig()},
    # 8 steps from t = 999, not t = 876 (bench/experiments/step_spacing.py, BENCHMARKS.md)
    "progressive": lambda: {"schedule": PHASE_2, "timestep_spacing": "trailing", "adversarial": AdversarialConfig()},
    "dpo": lambda: {"schedule": PHASE_1},
    # trained on the aesthetic reward (and coherence); alignment held out as the guard
    "grpo": lambda: {"schedule": PHASE_1, "grpo": GrpoConfig(), "reward_weights": {"aesthetic": 1.0}},
}


def stage_config(stage: str, **overrides: Any) -> FeedbackConfig:
    """The preset of `stage` with `overrides` (plain values, e.g. steps=50) applied."""
    if stage not in STAGE_PRESETS:
        raise ValueError(f"`stage` must be one of {list(STAGE_PRESETS)}, got {stage!r}")
    preset: dict[str, Any] = {"stage": stage, **STAGE_PRESETS[stage]()}
    data = FeedbackConfig(**preset).to_dict()
    for key, value in overrides.items():
        if key not in data:
            raise ValueError(f"unknown feedback config field {key!r}; known: {sorted(data)}")
        if key == "grpo" and isinstance(value, dict) and data[key] is not None:
            unknown = sorted(set(value) - set(data[key]))
            if unknown:
                raise ValueError(f"unknown grpo config field {unknown[0]!r}; known: {sorted(data[key])}")
            value = {**data[key], **value}  # the preset's, with these fields replaced
        data[key] = value
    return FeedbackConfig.from_dict(data)


def needs_coherence(cfg: FeedbackConfig) -> bool:
    return cfg.adversarial is not None or (cfg.grpo is not None and cfg.grpo.coherence_weight > 0)


def reward_kinds(cfg: FeedbackConfig) -> list[str]:
    """The promoted rewards a run of `cfg` loads: the weighted ones, GRPO's guards, and coherence when it needs it."""
    kinds = sorted(set(cfg.reward_weights) | set(cfg.grpo.guard if cfg.grpo is not None else ()))
    return kinds + (["coherence"] if needs_coherence(cfg) else [])
