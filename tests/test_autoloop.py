"""The loop that turns by itself: a promoted reward starts a feedback round (recorded with its trigger, once,
under a lock), nothing starts while one runs or when paused, and a policy that names an unknown reward is refused.
End to end on a real worker: a reward run promotes its version, and the round it starts runs and is gated."""

import threading
import time

import pytest
from conftest import start_worker, stop_worker, worker_state
from sqlalchemy import select

from editloop.cli.main import main
from editloop.db import TrainingRun, make_engine, make_sessionmaker, upgrade
from editloop.registry import promote, register_candidate
from editloop.settings import Settings
from trainers.autoloop import check_loop, policy, set_paused
from trainers.celery_app import make_celery
from trainers.chains import add_feedback_rows, send_feedback_chain
from trainers.queues import queue_depth


def _depth(settings, queue: str) -> int:
    return queue_depth(settings.resolved_broker_url(), queue)


SURE = {"units": 40, "unit": "held-out examples", "wins": 30, "p_value": 0.0011}


def _promote(sessions, kind: str, version: str, floor: dict | None = SURE) -> None:
    metrics = {"eval_score": 0.9, **({"floor": floor} if floor else {})}
    with sessions.begin() as s:
        register_candidate(s, kind, kind, version, f"key-{version}", metrics, {}, None)
        promote(s, kind, version, force=True)


def _check(sessions, settings):
    app = make_celery(settings)
    return check_loop(sessions, settings, add_feedback_rows,
                      lambda stages, ids, config: send_feedback_chain(app, stages, ids, config), "test")


def test_a_promoted_reward_starts_one_round_then_waits_for_the_next_promotion(db_url, tmp_path):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    settings = Settings(state_dir=tmp_path / "state", database_url=db_url, broker_url="", result_backend="",
                        loop_stages="pefl,adversarial", loop_feedback_steps=3)
    assert "waiting for a promoted aesthetic reward" in _check(sessions, settings).reason
    _promote(sessions, "aesthetic", "a0", {"units": 3, "unit": "held-out candidate sets", "wins": 2, "p_value": 0.5})
    _promote(sessions, "alignment", "b1")
    assert _check(sessions, settings).reason.startswith(  # a bad first reward never drives the loop
        "aesthetic reward a0: it does not surely beat chance on its held-out set: 2 of 3 held-out candidate sets "
        "right, one-sided sign test p = 0.5 (needs < 0.05, EDITLOOP_LOOP_FLOOR_ALPHA)")
    _promote(sessions, "aesthetic", "a1")
    barrier = threading.Barrier(2)
    results = []

    def racer() -> None:
        barrier.wait()
        results.append(_check(sessions, settings))

    threads = [threading.Thread(target=racer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [d for d in results if d.start]
    assert len(started) == 1, [d.reason for d in results]  # two checks at once start one round
    assert "debounced: feedback run" in next(d for d in results if not d.start).reason
    with sessions() as s:
        runs = s.scalars(select(TrainingRun).order_by(TrainingRun.kind)).all()
    assert sorted(r.kind for r in runs) == ["feedback-adversarial", "feedback-pefl"]
    assert all(r.status == "queued" and r.inputs["trigger"] == "loop (test): aesthetic reward a1 promoted"
               for r in runs)
    assert runs[0].inputs["config"]["kl_weight"] == 100.0 and runs[0].inputs["config"]["steps"] == 3
    assert _depth(settings, "gpu") == 1  # one chain message
    with sessions.begin() as s:  # the round ends
        for run in s.scalars(select(TrainingRun)):
            run.status = "succeeded"
    assert "no reward promoted since the last feedback round" in _check(sessions, settings).reason
    time.sleep(0.05)
    _promote(sessions, "aesthetic", "a2")
    with sessions.begin() as s:
        set_paused(s, True, "a person looks at the labels")
    assert _check(sessions, settings).reason.startswith("paused (a person looks at the labels)")
    with sessions.begin() as s:
        set_paused(s, False, "resumed")
    again = _check(sessions, settings)
    assert again.start and again.reason == "aesthetic reward a2 promoted" and len(again.run_ids) == 2


def test_a_bad_policy_is_named_and_the_cli_pauses_and_shows_the_loop(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="`EDITLOOP_LOOP_REWARDS` .*names unknown reward 'beauty'|names unknown"):
        policy(Settings(loop_rewards="aesthetic=1,beauty=2"))
    with pytest.raises(ValueError, match="`EDITLOOP_LOOP_STAGES` must be a prefix of pefl,adversarial,progressive"):
        policy(Settings(loop_stages="adversarial"))
    with pytest.raises(ValueError, match=r"dpo \(Diffusion-DPO from the labels\) or grpo .*got 'dpo,pefl'"):
        policy(Settings(loop_stages="dpo,pefl"))
    assert policy(Settings(loop_stages="dpo")).stages == ["dpo"]  # a DPO run per round, from the labels
    monkeypatch.setenv("EDITLOOP_STATE_DIR", str(tmp_path / "state"))
    assert main(["loop", "pause", "--reason", "labels look odd"]) == 0
    assert main(["loop", "status"]) == 0
    out = capsys.readouterr().out
    assert "loop: paused (labels look odd)" in out and "would not start: paused" in out
    assert "label sets: 16 of 32 made per served editor (active selection) + 2 gold, overlap 2; now: would not " \
           "start: waiting for Label Studio: Label Studio is not up (no " in out
    assert ("instruct editor: 1 alignment rounds per chain on a promoted alignment reward, settings default; now: "
            "would not start: paused (labels look odd)") in out
    assert main(["loop", "resume"]) == 0
    assert main(["loop", "status"]) == 0
    assert "loop: on" in capsys.readouterr().out
    monkeypatch.setenv("EDITLOOP_LOOP_REWARDS", "aesthetic=-1")
    assert main(["loop", "status"]) == 2
    assert "`reward_weights['aesthetic']` must be a finite number >= 0" in capsys.readouterr().err


def test_a_reward_run_that_promotes_starts_the_round_on_a_real_worker(tmp_path):
    """No command after the reward run: its promotion sends the loop check; the worker starts the round, the
    round trains, is gated, and records the loop as its trigger."""
    env, settings, sessions, _ = worker_state(tmp_path)
    env = {**env, "EDITLOOP_LOOP_REWARDS": "alignment=1", "EDITLOOP_LOOP_FEEDBACK_STEPS": "2",
           # 4 training steps cannot beat chance surely; the floors have their own tests
           "EDITLOOP_LOOP_FLOOR_ALPHA": "1", "EDITLOOP_PROMOTION_FLOOR_ALPHA": "1",
           "EDITLOOP_LOOP_ALIGN_ROUNDS": "0",  # the alignment leg has its own test (test_align_loop)
           "EDITLOOP_LOOP_BATCH_SIZE": "2", "EDITLOOP_LOOP_EVAL_EXAMPLES": "3"}
    app = make_celery(settings)
    config = {"steps": 4, "eval_every": 2, "batch_size": 16, "alignment_train": 64, "alignment_eval": 32,
              "tolerance": 1.0}
    with sessions.begin() as s:
        s.add(TrainingRun(id="f" * 32, kind="reward-alignment", status="queued", inputs={"config": config}))
    app.send_task("editloop.gpu.train_reward", args=["alignment", "f" * 32, config], task_id="f" * 32)
    worker = start_worker("gpu,cpu", "loop", env)
    try:
        deadline = time.monotonic() + 900
        rounds = []
        while time.monotonic() < deadline:
            with sessions() as s:
                rounds = s.scalars(select(TrainingRun).where(TrainingRun.kind == "feedback-pefl")).all()
                if rounds and rounds[0].status in ("succeeded", "failed"):
                    break
            time.sleep(3)
    finally:
        stop_worker(worker)
    with sessions() as s:
        reward = s.get(TrainingRun, "f" * 32)
    assert reward.status == "succeeded" and reward.outputs["promoted"] is True, reward.error
    assert len(rounds) == 1, "the promotion did not start a round"
    assert rounds[0].status == "succeeded", rounds[0].error
    assert rounds[0].inputs["trigger"].startswith("loop (alignment reward promoted): alignment reward alignment-")
    assert "promoted" in rounds[0].outputs  # gated like a round started by hand
    floor = reward.outputs["metrics"]["floor"]  # recorded with every alignment version
    assert floor["units"] == 32 and 0 <= floor["wins"] <= 32 and 0 < floor["p_value"] <= 1
