"""The Celery app with a real worker process on Redis, RabbitMQ and the embedded SQL broker."""

import os
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
