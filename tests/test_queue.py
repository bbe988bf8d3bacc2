"""The Celery app with a real worker process on Redis, RabbitMQ and the embedded SQL broker."""

import os
import re
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import select

from editloop.db import CandidateSet, Generation, make_engine, make_sessionmaker
from editloop.settings import Settings
from editloop.store import open_store
from editloop.world import cell_mask, render, sample_scene
from editloop.world.io import mask_to_png, to_png

BROKERS = {
    "redis": ("redis://127.0.0.1:6379/5", "redis://127.0.0.1:6379/6"),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672//", "redis://127.0.0.1:6379/6"),
    "embedded": ("", ""),  # kombu SQLAlchemy transport + SQLAlchemy result backend on SQLite
}


@pytest.fixture(params=list(BROKERS))
def worker(request, tmp_path, tiny_models):
    broker, backend = BROKERS[request.param]
    queue_suffix = uuid.uuid4().hex[:6]
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(tmp_path / "state"), "EDITLOOP_BROKER_URL": broker,
           "EDITLOOP_RESULT_BACKEND": backend, "EDITLOOP_GENERATOR_MODEL": str(tiny_models / "t2i"),
           "EDITLOOP_EDITOR_MODEL": str(tiny_models / "inpaint"), "EDITLOOP_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "trainers.celery_app", "worker", "-Q", "gpu,cpu", "--pool", "solo",
         "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-n", f"test-{queue_suffix}@%h"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    old = {k: os.environ.get(k) for k in env if k.startswith("EDITLOOP_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("EDITLOOP_")})
    try:
        yield Settings(), proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_worker_generates_and_records_candidate_sets_idempotently(worker):
    from trainers.celery_app import make_celery

    settings, proc = worker
    app = make_celery(settings)
    store = open_store(settings)
    scene = sample_scene(__import__("numpy").random.default_rng(0), 2)
    source, mask = store.put(to_png(render(scene))), store.put(mask_to_png(cell_mask(scene.objects[0].position)))
    key = f"k-{uuid.uuid4().hex}"
    specs = [
        dict(prompt=scene.caption, n=3, steps=2, seed=5, idempotency_key=key),
        dict(prompt=scene.caption, n=2, steps=2, kind="inpaint", source_key=source, mask_key=mask),
    ]
    results = [app.send_task("editloop.gpu.generate_candidates", args=[s]) for s in specs]
    again = app.send_task("editloop.gpu.generate_candidates", args=[specs[0]])
    deadline = time.time() + 240
    out = []
    for r in [*results, again]:
        out.append(r.get(timeout=max(deadline - time.time(), 1)))
    assert out[0]["candidate_set_id"] == out[2]["candidate_set_id"]  # same key, same set
    with make_sessionmaker(make_engine(settings.resolved_database_url()))() as s:
        sets = s.scalars(select(CandidateSet).order_by(CandidateSet.id)).all()
        assert [len(c.items) for c in sets] == [3, 2]
        assert sets[1].kind == "inpaint" and sets[1].mask_key == mask
        gens = s.scalars(select(Generation)).all()
        assert len(gens) == 2 and {g.steps for g in gens} == {2}
        for c in sets:
            assert all(store.exists(i.image.blob_key) for i in c.items)


def test_bad_spec_fails_the_task_with_the_field_named(worker):
    from trainers.celery_app import make_celery

    settings, _ = worker
    app = make_celery(settings)
    r = app.send_task("editloop.gpu.generate_candidates", args=[dict(prompt="a red circle", n=1)])
    with pytest.raises(ValueError, match="`n` must be in 2..16"):
        r.get(timeout=120)
    # a message no editloop sender would build (another client, an old sender): refused by the worker's payload
    # check before any run row or model, with the field named
    r = app.send_task("editloop.gpu.train_reward", args=["aesthetic", "../etc", None])
    with pytest.raises(ValueError, match=r"train_reward: `run_id` must be 1..32 letters"):
        r.get(timeout=120)
    with make_sessionmaker(make_engine(settings.resolved_database_url()))() as s:
        from editloop.db import TrainingRun

        assert s.scalars(select(TrainingRun)).all() == []


def test_payloads_are_checked_where_they_are_built():
    from editloop import queue

    assert queue.TrainReward("alignment", "a" * 32, {"steps": 3}).args() == ["alignment", "a" * 32, {"steps": 3}]
    link = queue.FeedbackStage("pefl", "r1", {"steps": 2})
    assert link.args() == [None, "pefl", "r1", {"steps": 2}] and link.args(first=False) == ["pefl", "r1", {"steps": 2}]
    assert queue.AlignRound("r2", None, {"version": "align-r1-x"}).args()[0] == {"version": "align-r1-x"}
    bad = [(lambda: queue.TrainReward("beauty", "r1"), "`kind` must be one of ['aesthetic', 'alignment', 'coherence'"),
           (lambda: queue.TrainReward("aesthetic", "x" * 33), "`run_id` must be 1..32"),
           (lambda: queue.TrainReward("aesthetic", "r1", ["steps", 3]), "`config` must be a JSON object"),
           (lambda: queue.TrainReward("aesthetic", "r1", {"lr": float("nan")}), "JSON-serialisable with finite"),
           (lambda: queue.FeedbackStage("PeFL!", "r1"), "`stage` must be a stage name"),
           (lambda: queue.AlignRound("r1", None, {"version": 3}), "`previous` must be null or"),
           (lambda: queue.MakeLabelSets(""), "`run_id` must be"),
           (lambda: queue.GenerateCandidateSets([]), "`specs` must be a list of 1..10000"),
           (lambda: queue.GenerateCandidateSets(["a red circle"]), "`specs[0]` must be an object")]
    for build, message in bad:
        with pytest.raises(queue.PayloadError, match=re.escape(message)):
            build()


@pytest.mark.parametrize("worker", ["redis"], indirect=True)
def test_edit_sets_for_labelling_come_from_the_editor_version_asked_for(worker, tiny_models, tmp_path, capsys):
    """On-policy labels: edit candidate sets made by a registered editor version (a candidate, then the served one
    once promoted), recorded with its name, version and default steps; enqueuing again makes nothing new."""
    import json
    import shutil

    from editloop.cli.main import main
    from editloop.registry import promote, register_candidate, store_model_dir
    from editloop.state import open_state
    from trainers.candidates import CandidateSpec
    from trainers.edit_sets import EditSetsRequest, make_edit_sets, wait_for_sets

    settings, _ = worker
    editor_dir = tmp_path / "editor"
    shutil.copytree(tiny_models / "inpaint", editor_dir)
    (editor_dir / "editloop.json").write_text(json.dumps({"kind": "editor", "version": "tiny-3", "default_steps": 3}))
    sessions, store = open_state(settings)
    with sessions.begin() as s:
        register_candidate(s, "editor", "editor", "tiny-3", store_model_dir(store, editor_dir),
                           {"eval_score": 0.1}, {}, None)

    def made(request: EditSetsRequest) -> tuple[str, list[int]]:
        editor, results = make_edit_sets(settings, request)
        return editor, wait_for_sets(results, 240, lambda n: None)

    editor, ids = made(EditSetsRequest(editor="tiny-3", sets=2, images=2))
    assert editor == "tiny-3" and len(set(ids)) == 2
    assert made(EditSetsRequest(editor="tiny-3", sets=2, images=2))[1] == ids  # idempotent
    served, base_ids = made(EditSetsRequest(editor="served", sets=1, images=2, steps=2))
    assert served == "base"  # nothing promoted yet
    with sessions.begin() as s:
        promote(s, "editor", "tiny-3", force=True)
    assert made(EditSetsRequest(editor="served", sets=1, images=2, seed=7))[0] == "tiny-3"
    with sessions() as s:
        sets = {c.id: c for c in s.scalars(select(CandidateSet))}
        assert len(sets) == 4
        for set_id in ids:
            cs = sets[set_id]
            gen = s.get(Generation, cs.generation_id)
            assert cs.kind == "inpaint" and cs.mask_key and len(cs.items) == 2
            assert (gen.model_name, gen.model_version, gen.steps) == ("editor", "tiny-3", 3)
        gen = s.get(Generation, sets[base_ids[0]].generation_id)
        assert (gen.model_name, gen.steps) == ("base-inpaint", 2)
    with pytest.raises(ValueError, match="`editor` 'nope': no editor version 'nope'"):
        make_edit_sets(settings, EditSetsRequest(editor="nope", sets=1))
    with pytest.raises(ValueError, match="`editor` applies to inpaint and instruct candidate sets only"):
        CandidateSpec(prompt="a red circle", editor="tiny-3").check()
    assert main(["annotation", "candidates", "--editor", "nope", "--sets", "1"]) == 2
    assert "no editor version 'nope'" in capsys.readouterr().err
    assert main(["annotation", "candidates", "--sets", "0"]) == 2
    assert "`sets` must be in 1..10000, got 0" in capsys.readouterr().err


def test_every_task_the_worker_registers_is_in_the_queue_contract():
    import trainers.tasks  # noqa: F401 - registers the tasks
    from editloop import queue
    from trainers.celery_app import app

    assert {name for name in app.tasks if name.startswith("editloop.")} == set(queue.TASKS)
    assert {queue.queue_of(t) for t in queue.TASKS} == {q.name for q in app.conf.task_queues}
