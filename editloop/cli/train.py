"""`editloop train reward --kind K [--wait]`: enqueue a reward-model training run on the gpu queue."""

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
    from editloop.db import TrainingRun, make_engine, make_sessionmaker

    settings = Settings()
    config = {"auto_promote": not args.no_promote, **({"steps": args.steps} if args.steps else {})}
    run_id = enqueue_reward_run(settings, args.kind, config, "by hand: editloop train reward")
    print(f"queued {args.kind} reward run {run_id} (a worker on the gpu queue runs it)")
    if not args.wait:
        return 0
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
    last = None
    while True:
        with sessions() as s:
            run = s.get(TrainingRun, run_id)
            state = (run.status, round(run.progress, 2))
            if state != last:
                print(f"  {run.status} {run.progress:.0%}", flush=True)
                last = state
            if run.status in ("succeeded", "failed"):
                outputs = {k: v for k, v in run.outputs.items() if k != "history"}
                print(json.dumps(outputs if run.status == "succeeded" else {"error": run.error}, indent=2))
                return 0 if run.status == "succeeded" else 1
        time.sleep(2)
