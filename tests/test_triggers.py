"""Retraining triggers: thresholds, drift, debouncing; and the real thing with Celery beat and a worker."""

import os
import subprocess
import sys
import time
import uuid

from sqlalchemy import select

from editloop.db import TrainingRun, make_engine, make_sessionmaker, upgrade
from editloop.labels.simulated import LabelPlan, render_candidate_sets, simulate_labels
from editloop.settings import Settings
from editloop.store.local import LocalBlobStore
from editloop.world.annotators import SimulatedAnnotator
from trainers.triggers import check_triggers


def setup(db_url, tmp_path, **overrides):
    upgrade(db_url)
    settings = Settings(state_dir=tmp_path / "state", database_url=db_url, **overrides)
    sessions = make_sessionmaker(make_engine(db_url))
    return settings, sessions, LocalBlobStore(settings.resolved_blob_dir())


def label(sessions, store, n, seed=0):
    ids = render_candidate_sets(sessions, store, n, 3, seed=seed)
    simulate_labels(sessions, store, ids, LabelPlan([SimulatedAnnotator("a", 0.5, seed=seed)]))


def test_a_burst_of_labels_starts_one_run_and_every_start_has_its_reason(db_url, tmp_path):
    settings, sessions, store = setup(db_url, tmp_path, retrain_label_threshold=20, retrain_debounce_s=600)
    sent = []
    enqueue = lambda kind, run_id, config: sent.append(run_id)  # noqa: E731
    label(sessions, store, 10)
    assert not check_triggers(sessions, settings, enqueue).start  # 10 < 20
    label(sessions, store, 50, seed=1)
    decisions = [check_triggers(sessions, settings, enqueue, source="burst") for _ in range(5)]
    assert [d.start for d in decisions] == [True, False, False, False, False] and len(sent) == 1
    assert decisions[1].reason.startswith("debounced: run") and "is queued" in decisions[1].reason
    with sessions() as s:
        run = s.scalars(select(TrainingRun)).one()
        assert run.inputs["trigger"] == "burst: new labels: 60 >= 20" and run.id == sent[0]


def test_a_version_the_gate_refused_is_not_retrained_at_once_on_the_same_labels(db_url, tmp_path):
    """The loop's first reward at 104 labels was refused by the floor; counting every label again (nothing was
    promoted) restarted training on nearly the same labels each check (bench/loop_turn.py): a refused version's
    labels are not new."""
    from editloop.db import Preference
    from editloop.registry import register_candidate

    settings, sessions, store = setup(db_url, tmp_path, retrain_label_threshold=20, retrain_debounce_s=0)
    label(sessions, store, 30)
    with sessions.begin() as s:
        seen = max(s.scalars(select(Preference.id)))
        register_candidate(s, "aesthetic", "aesthetic", "refused-1", "sha256:x", {"eval_score": 0.5},
                           {"lineage": {"max_label_id": seen}}, None)
    quiet = check_triggers(sessions, settings, lambda *a: None)
    assert not quiet.start and quiet.reason == "no trigger: 0 new labels"
    label(sessions, store, 25, seed=1)
    again = check_triggers(sessions, settings, lambda *a: None)
    assert again.start and again.reason == "new labels: 25 >= 20"


def test_drift_on_the_newest_labels_starts_a_run(db_url, tmp_path):
    settings, sessions, store = setup(db_url, tmp_path, retrain_label_threshold=1000, drift_window=30,
                                      drift_min_accuracy=0.6)
    label(sessions, store, 40)
    sent = []
    fine = check_triggers(sessions, settings, lambda *a: sent.append(a), drift=lambda s: 0.8)
    assert not fine.start and fine.reason == "no trigger: 40 new labels"
    drifted = check_triggers(sessions, settings, lambda *a: sent.append(a), drift=lambda s: 0.41)
    assert drifted.start and drifted.reason == "drift: accuracy 0.410 on the newest 30 labels < 0.6" and len(sent) == 1


def test_beat_and_a_real_worker_retrain_once_after_a_burst(tmp_path):
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(tmp_path / "state"), "EDITLOOP_BROKER_URL": "",
           "EDITLOOP_RESULT_BACKEND": "", "EDITLOOP_DEVICE": "cpu", "EDITLOOP_TRIGGER_INTERVAL_S": "1",
           "EDITLOOP_RETRAIN_LABEL_THRESHOLD": "20", "EDITLOOP_REWARD_TRAIN_STEPS": "10"}
    settings = Settings(state_dir=tmp_path / "state")
    url = settings.resolved_database_url()
    settings, sessions, store = setup(url, tmp_path)
    label(sessions, store, 40)
    celery = [sys.executable, "-m", "celery", "-A", "trainers.celery_app"]
    procs = [
        subprocess.Popen([*celery, "worker", "-Q", "cpu,gpu", "--pool", "solo", "--without-gossip", "--without-mingle",
                          "--without-heartbeat", "-n", f"trig-{uuid.uuid4().hex[:6]}@%h"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([*celery, "beat", "-s", str(tmp_path / "beat-schedule")], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        deadline, runs = time.time() + 400, []
        while time.time() < deadline and not (runs and runs[0].status in ("succeeded", "failed")):
            time.sleep(1)
            with sessions() as s:
                runs = s.scalars(select(TrainingRun)).all()
        time.sleep(4)  # a few more beats: the promoted version's lineage now covers every label
        with sessions() as s:
            runs = s.scalars(select(TrainingRun)).all()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    assert len(runs) == 1, [(r.status, r.inputs) for r in runs]
    assert runs[0].status == "succeeded", runs[0].error
    assert runs[0].inputs["trigger"] == "schedule: new labels: 40 >= 20"
