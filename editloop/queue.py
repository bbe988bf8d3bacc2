"""The task queue's contract, as the proto is the gRPC services': every Celery task's name and its queue.

Senders (the CLI, beat's schedule, the loop, the reaper, the annotation endpoint) and the worker (trainers/tasks.py)
name tasks only through these constants; the part after "editloop.<queue>." routes the task (trainers/celery_app.py:
editloop.gpu.* to the gpu queue, editloop.cpu.* to the cpu queue).
"""

from __future__ import annotations

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
