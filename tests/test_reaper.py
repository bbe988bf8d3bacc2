"""Runs never hang in a state: the heartbeat, and the reaper that re-queues a run whose worker died (a real
worker then finishes it from its checkpoint) or fails it with the reason once re-queues are spent."""

import time
from datetime import UTC, datetime, timedelta

from conftest import start_worker, worker_state

from editloop.db import TrainingRun
from trainers.celery_app import make_celery
from trainers.queues import queue_depth
from trainers.reaper import heartbeat, reap

SMALL = {"steps": 4, "eval_every": 2, "batch_size": 16, "alignment_train": 64, "alignment_eval": 32}


def _row(sessions, run_id: str, **fields) -> None:
    with sessions.begin() as s:
        s.add(TrainingRun(id=run_id, **fields))


def _depth(settings, queue: str) -> int:
    return queue_depth(settings.resolved_broker_url(), queue)


def test_heartbeat_touches_a_running_row(tmp_path):
    _, _, sessions, _ = worker_state(tmp_path)
    old = datetime.now(UTC) - timedelta(hours=1)
    _row(sessions, "r" * 32, kind="reward-alignment", status="running", updated_at=old)
    with heartbeat(sessions, "r" * 32, 0.2):
        time.sleep(0.8)
    with sessions() as s:
        touched = s.get(TrainingRun, "r" * 32).updated_at
    assert (touched if touched.tzinfo else touched.replace(tzinfo=UTC)) > old + timedelta(minutes=59)


def test_a_run_whose_worker_died_is_requeued_and_a_real_worker_finishes_it(tmp_path):
    env, settings, sessions, _ = worker_state(tmp_path)
    settings = settings.model_copy(update={"run_stale_s": 60, "run_lost_s": 600})
    app = make_celery(settings)
    stale = datetime.now(UTC) - timedelta(minutes=10)
    _row(sessions, "a" * 32, kind="reward-alignment", status="running", updated_at=stale,
         inputs={"config": SMALL, "trigger": "test"})
    _row(sessions, "b" * 32, kind="reward-alignment", status="running", updated_at=datetime.now(UTC),
         inputs={"config": SMALL})  # beating: left alone

    def send(name, args, run_id):
        app.send_task(name, args=args, task_id=run_id)

    reaped = reap(sessions, settings, send, lambda q: _depth(settings, q) == 0)
    assert [(r.run_id, r.action) for r in reaped] == [("a" * 32, "requeued")]
    with sessions() as s:
        row = s.get(TrainingRun, "a" * 32)
        assert row.status == "queued" and row.inputs["requeues"] == 1
        assert "worker lost: no heartbeat for" in row.error and "re-queued from its checkpoint (1 of 2)" in row.error
        assert s.get(TrainingRun, "b" * 32).status == "running"
    assert _depth(settings, "gpu") == 1
    worker = start_worker("gpu", "reaped", env)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with sessions() as s:
                row = s.get(TrainingRun, "a" * 32)
                if row.status in ("succeeded", "failed"):
                    break
            time.sleep(2)
    finally:
        worker.terminate()
        worker.wait(30)
    assert row.status == "succeeded", row.error
    assert row.progress == 1.0 and row.outputs["version"]


def test_spent_requeues_fail_the_run_and_cancel_its_chain_and_a_lost_message_is_sent_again(tmp_path):
    _, settings, sessions, _ = worker_state(tmp_path)
    settings = settings.model_copy(update={"run_stale_s": 60, "run_lost_s": 120, "run_max_requeues": 2})
    app = make_celery(settings)
    old = datetime.now(UTC) - timedelta(hours=1)
    chain = ["c" * 32, "d" * 32]
    _row(sessions, chain[0], kind="feedback-pefl", status="running", updated_at=old,
         inputs={"config": {"steps": 2}, "chain": chain, "requeues": 2})
    _row(sessions, chain[1], kind="feedback-adversarial", status="queued", updated_at=old,
         inputs={"config": {"steps": 2}, "chain": chain})
    _row(sessions, "e" * 32, kind="reward-coherence", status="queued", updated_at=old, inputs={"config": SMALL})
    sent = []

    def send(name, args, run_id):
        sent.append((name, run_id))
        app.send_task(name, args=args, task_id=run_id)

    reaped = {r.run_id: r for r in reap(sessions, settings, send, lambda q: _depth(settings, q) == 0)}
    assert reaped[chain[0]].action == "failed" and "gave up after 2 re-queues" in reaped[chain[0]].reason
    assert reaped["e" * 32].action == "requeued" and "message lost: queued for" in reaped["e" * 32].reason
    assert chain[1] not in reaped  # it waited on the stage before it; that one's failure cancels it
    assert sent == [("editloop.gpu.train_reward", "e" * 32)] and _depth(settings, "gpu") == 1
    with sessions() as s:
        assert s.get(TrainingRun, chain[1]).status == "cancelled"
        assert "before it in the chain failed" in s.get(TrainingRun, chain[1]).error
    assert reap(sessions, settings, send, lambda q: _depth(settings, q) == 0) == []  # nothing hung any more
