"""The task queue's contract, as the proto is the gRPC services': every Celery task's name, its queue and the
typed payload of the tasks that carry one.

Senders (the CLI, beat's schedule, the loop, the reaper, the annotation endpoint) and the worker (trainers/tasks.py)
name tasks only through these constants; the part after "editloop.<queue>." routes the task (trainers/celery_app.py:
editloop.gpu.* to the gpu queue, editloop.cpu.* to the cpu queue). A payload is built as its dataclass on both
edges: the sender's `.args()` is what goes on the wire, and the worker rebuilds it from the message before any work,
so a malformed message (another client, an old sender) fails its task at once with the field, the value and the
rule named (PayloadError), never midway through a run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

GPU_QUEUE, CPU_QUEUE = "gpu", "cpu"

GENERATE_CANDIDATES = "editloop.gpu.generate_candidates"
GENERATE_CANDIDATE_SETS = "editloop.gpu.generate_candidate_sets"
MAKE_LABEL_SETS = "editloop.gpu.make_label_sets"
TRAIN_REWARD = "editloop.gpu.train_reward"
FEEDBACK_STAGE = "editloop.gpu.feedback_stage"
ALIGN_ROUND = "editloop.gpu.align_round"
APPLY_LABEL_EVENTS = "editloop.cpu.apply_label_events"
CHECK_TRIGGERS = "editloop.cpu.check_triggers"
CHECK_LOOP = "editloop.cpu.check_loop"
REAP_RUNS = "editloop.cpu.reap_runs"

TASKS = (GENERATE_CANDIDATES, GENERATE_CANDIDATE_SETS, MAKE_LABEL_SETS, TRAIN_REWARD, FEEDBACK_STAGE, ALIGN_ROUND,
         APPLY_LABEL_EVENTS, CHECK_TRIGGERS, CHECK_LOOP, REAP_RUNS)


def queue_of(task: str) -> str:
    """The queue a task runs on (the second part of its name)."""
    return task.split(".")[1]


class PayloadError(ValueError):
    """A task's payload breaks the contract; the message names the task, the field, the value and the rule."""


RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # training_runs.id is 32 characters (uuid4().hex)
STAGE = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _fail(task: str, field: str, value: Any, rule: str) -> PayloadError:
    shown = repr(value)
    return PayloadError(f"{task}: `{field}` must be {rule}, got {shown[:80] + '...' if len(shown) > 80 else shown}")


def check_run_id(task: str, value: Any) -> None:
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise _fail(task, "run_id", value, "1..32 letters, digits, '-' or '_' (a training run's id)")


def check_config(task: str, value: Any, field: str = "config") -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _fail(task, field, value, "a JSON object (or null)")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise _fail(task, field, value, "JSON-serialisable with finite numbers") from None


def check_previous(task: str, value: Any) -> None:
    """A chain's previous result: null for the first link, else an object whose `version` (if any) is a string."""
    if value is None:
        return
    if not isinstance(value, dict) or not isinstance(value.get("version", ""), str):
        raise _fail(task, "previous", value, "null or the previous link's result (an object with a string version)")


@dataclass(frozen=True)
class TrainReward:
    """TRAIN_REWARD: train (or resume) reward run `run_id` of `kind` with `config` (RewardTrainConfig fields)."""

    kind: str
    run_id: str
    config: dict[str, Any] | None = None
    task = TRAIN_REWARD

    def __post_init__(self) -> None:
        from editloop.models.reward_kinds import kind_names

        if self.kind not in kind_names():
            raise _fail(self.task, "kind", self.kind, f"one of {list(kind_names())}")
        check_run_id(self.task, self.run_id)
        check_config(self.task, self.config)

    def args(self) -> list[Any]:
        return [self.kind, self.run_id, self.config]


@dataclass(frozen=True)
class FeedbackStage:
    """FEEDBACK_STAGE: one feedback stage (pefl, adversarial, progressive, dpo, grpo) of run `run_id`; in a chain
    `previous` is the stage before's result, and the chain supplies it (args() leaves it out unless `first`)."""

    stage: str
    run_id: str
    config: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    task = FEEDBACK_STAGE

    def __post_init__(self) -> None:
        if not isinstance(self.stage, str) or not STAGE.fullmatch(self.stage):
            raise _fail(self.task, "stage", self.stage, "a stage name (lower-case identifier)")
        check_run_id(self.task, self.run_id)
        check_config(self.task, self.config)
        check_previous(self.task, self.previous)

    def args(self, first: bool = True) -> list[Any]:
        return [self.previous, self.stage, self.run_id, self.config] if first else [
            self.stage, self.run_id, self.config]


@dataclass(frozen=True)
class AlignRound:
    """ALIGN_ROUND: one SeedEdit alignment round of run `run_id`; `previous` as for FeedbackStage."""

    run_id: str
    config: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    task = ALIGN_ROUND

    def __post_init__(self) -> None:
        check_run_id(self.task, self.run_id)
        check_config(self.task, self.config)
        check_previous(self.task, self.previous)

    def args(self, first: bool = True) -> list[Any]:
        return [self.previous, self.run_id, self.config] if first else [self.run_id, self.config]


@dataclass(frozen=True)
class MakeLabelSets:
    """MAKE_LABEL_SETS: a batch of candidate sets for labelling, run `run_id` (its row holds the batch's plan)."""

    run_id: str
    task = MAKE_LABEL_SETS

    def __post_init__(self) -> None:
        check_run_id(self.task, self.run_id)

    def args(self) -> list[Any]:
        return [self.run_id]


@dataclass(frozen=True)
class GenerateCandidateSets:
    """GENERATE_CANDIDATE_SETS: candidate sets from `specs` (each a CandidateSpec's fields, checked by the worker
    field by field: trainers/candidates.py)."""

    specs: list[dict[str, Any]]
    task = GENERATE_CANDIDATE_SETS
    MAX_SPECS = 10_000

    def __post_init__(self) -> None:
        if not isinstance(self.specs, list) or not 1 <= len(self.specs) <= self.MAX_SPECS:
            raise _fail(self.task, "specs", self.specs, f"a list of 1..{self.MAX_SPECS} candidate specs")
        for i, spec in enumerate(self.specs):
            if not isinstance(spec, dict):
                raise _fail(self.task, f"specs[{i}]", spec, "an object of CandidateSpec fields")
            check_config(self.task, spec, f"specs[{i}]")

    def args(self) -> list[Any]:
        return [self.specs]
