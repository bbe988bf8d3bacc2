"""`editloop train reward --kind K [--wait]`: enqueue a reward-model training run on the gpu queue.
`editloop train pefl|adversarial|progressive [--wait]`: enqueue a feedback chain (ByteEdit) on the gpu queue."""

from __future__ import annotations

import argparse
import json
import time
import uuid

from editloop.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="enqueue training runs")
    tsub = p.add_subparsers(dest="train_command", required=True)
    r = tsub.add_parser("reward", help="train a reward model from the labels (a Celery task on the gpu queue)")
    r.add_argument("--kind", required=True, choices=["aesthetic", "alignment", "coherence"])
    r.add_argument("--steps", type=int, default=None, help="training steps (default 1500)")
    r.add_argument("--no-promote", action="store_true", help="register the candidate but do not promote it")
    r.add_argument("--wait", action="store_true", help="wait for the run and print its result")
    r.set_defaults(func=_train_reward)
    for stage, what in (("pefl", "PeFL with the aesthetic and alignment rewards (T=20)"),
                        ("adversarial", "PeFL, then the adversarial stage with the coherence critic"),
                        ("progressive", "PeFL, adversarial, then progressive acceleration to 8 steps")):
        f = tsub.add_parser(stage, help=f"feedback chain: {what}")
        f.add_argument("--only", action="store_true",
                       help=f"run only the {stage} stage, starting from the promoted editor")
        f.add_argument("--steps", type=int, default=None, help="training steps per stage (default 200)")
        f.add_argument("--batch-size", type=int, default=None)
        f.add_argument("--eval-examples", type=int, default=None, help="held-out examples per evaluation")
        f.add_argument("--no-promote", action="store_true", help="register candidates but do not promote them")
        f.add_argument("--wait", action="store_true", help="wait for the chain and print each stage's result")
        f.set_defaults(func=_train_feedback, stage=stage)


def enqueue_reward_run(settings: Settings, kind: str, config: dict, reason: str) -> str:
    """Record a queued run with the reason it was started, then send the task; returns the run id."""
    from editloop.db import TrainingRun
    from editloop.state import open_sessions
    from trainers.celery_app import make_celery

    run_id = uuid.uuid4().hex
    with open_sessions(settings).begin() as s:
        s.add(TrainingRun(id=run_id, kind=f"reward-{kind}", status="queued",
                          inputs={"config": config, "trigger": reason}))
    result = make_celery(settings).send_task("editloop.gpu.train_reward", args=[kind, run_id, config],
                                             task_id=run_id)
    return result.id


def _train_reward(args: argparse.Namespace) -> int:
    settings = Settings()
    config = {"auto_promote": not args.no_promote, **({"steps": args.steps} if args.steps else {})}
    run_id = enqueue_reward_run(settings, args.kind, config, "by hand: editloop train reward")
    print(f"queued {args.kind} reward run {run_id} (a worker on the gpu queue runs it)")
    if not args.wait:
        return 0
    return wait_for_run(settings, run_id, args.kind)


def feedback_stages(stage: str, only: bool) -> list[str]:
    from trainers.feedback.loop import STAGES

    return [stage] if only else list(STAGES[: STAGES.index(stage) + 1])


def enqueue_feedback_chain(settings: Settings, stages: list[str], config: dict, reason: str) -> list[str]:
    """Record one queued run per stage, then send them as one Celery chain; returns the run ids."""
    from celery import chain

    from editloop.db import TrainingRun
    from editloop.state import open_sessions
    from trainers.celery_app import make_celery

    run_ids = [uuid.uuid4().hex for _ in stages]
    with open_sessions(settings).begin() as s:
        for stage, run_id in zip(stages, run_ids):
            s.add(TrainingRun(id=run_id, kind=f"feedback-{stage}", status="queued",
                              inputs={"config": config, "trigger": reason, "chain": run_ids}))
    app = make_celery(settings)
    sigs = [app.signature("editloop.gpu.feedback_stage", args=[None, stages[0], run_ids[0], config],
                          task_id=run_ids[0])]
    sigs += [app.signature("editloop.gpu.feedback_stage", args=[stage, run_id, config], task_id=run_id)
             for stage, run_id in zip(stages[1:], run_ids[1:])]  # each gets the stage before's result first
    chain(*sigs).apply_async()
    return run_ids


def _train_feedback(args: argparse.Namespace) -> int:
    settings = Settings()
    config: dict = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v}
    evaluation = {"auto_promote": not args.no_promote,
                  **({"examples": args.eval_examples} if args.eval_examples else {})}
    config["eval"] = evaluation
    stages = feedback_stages(args.stage, args.only)
    run_ids = enqueue_feedback_chain(settings, stages, config, f"by hand: editloop train {args.stage}")
    for stage, run_id in zip(stages, run_ids):
        print(f"queued {stage} run {run_id}")
    if not args.wait:
        return 0
    for stage, run_id in zip(stages, run_ids):
        if wait_for_run(settings, run_id, stage) != 0:
            return 1
    return 0


def wait_for_run(settings: Settings, run_id: str, label: str) -> int:
    """Print the run's status and progress as they change; then its outputs or error. 0 if it succeeded."""
    from editloop.db import TrainingRun
    from editloop.state import open_sessions

    sessions = open_sessions(settings)
    last = None
    while True:
        with sessions() as s:
            run = s.get(TrainingRun, run_id)
            state = (run.status, round(run.progress, 2))
            if state != last:
                print(f"  {label}: {run.status} {run.progress:.0%}", flush=True)
                last = state
            if run.status in ("succeeded", "failed"):
                outputs = {k: v for k, v in (run.outputs or {}).items() if k != "history"}
                print(json.dumps(outputs if run.status == "succeeded" else {"error": run.error}, indent=2))
                return 0 if run.status == "succeeded" else 1
        time.sleep(2)
