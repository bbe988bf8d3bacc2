"""A run's checkpoint files mirrored into the blob store (trainers/run_mirror.py): another host restores them."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from editloop.db import make_engine, make_sessionmaker, upgrade
from editloop.db.models import RunFile
from editloop.store.base import BlobNotFound
from editloop.store.local import LocalBlobStore
from trainers.run_mirror import mirrored, push, restore


@pytest.fixture
def state(tmp_path, db_url):
    upgrade(db_url)
    return make_sessionmaker(make_engine(db_url)), LocalBlobStore(tmp_path / "blobs")


def test_another_host_restores_the_newest_checkpoint_and_old_blobs_go(tmp_path, state):
    sessions, store = state
    host_a, host_b = tmp_path / "a" / "run1", tmp_path / "b" / "run1"
    host_a.mkdir(parents=True)
    (host_a / "checkpoint.pt").write_bytes(b"step 100")
    (host_a / "snapshots").mkdir()
    (host_a / "snapshots" / "step-000100.pt").write_bytes(b"snap 100")
    (host_a / "checkpoint.pt.tmp").write_bytes(b"half written")
    assert push(sessions, store, "run1", host_a) == ["checkpoint.pt", "snapshots/step-000100.pt"]
    assert push(sessions, store, "run1", host_a) == []  # nothing changed: nothing uploaded again

    with sessions() as s:
        first = s.get(RunFile, ("run1", "checkpoint.pt")).key
    (host_a / "checkpoint.tmp").write_bytes(b"step 200")
    os.replace(host_a / "checkpoint.tmp", host_a / "checkpoint.pt")  # as save_checkpoint replaces it
    assert push(sessions, store, "run1", host_a) == ["checkpoint.pt"]
    with pytest.raises(BlobNotFound):
        store.get(first)  # the superseded checkpoint's blob is gone

    # host a disappears; host b takes the run over
    assert sorted(restore(sessions, store, "run1", host_b)) == ["checkpoint.pt", "snapshots/step-000100.pt"]
    assert (host_b / "checkpoint.pt").read_bytes() == b"step 200"
    assert (host_b / "snapshots" / "step-000100.pt").read_bytes() == b"snap 100"
    assert not (host_b / "checkpoint.pt.tmp").exists()
    assert restore(sessions, store, "run1", host_b) == []  # already current
    assert restore(sessions, store, "other-run", tmp_path / "c") == []


def test_the_mirror_pushes_while_the_task_runs_and_when_it_fails(tmp_path, state):
    sessions, store = state
    run_dir = tmp_path / "runs" / "run2"
    run_dir.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="step 3 failed"):
        with mirrored(sessions, store, "run2", run_dir, interval=0.05):
            (run_dir / "checkpoint.pt").write_bytes(b"step 2")
            raise RuntimeError("step 3 failed")
    with sessions() as s:
        rows = s.scalars(select(RunFile).where(RunFile.run_id == "run2")).all()
    assert [(r.name, r.size) for r in rows] == [("checkpoint.pt", 6)]
    assert store.get(rows[0].key) == b"step 2"


def test_a_succeeded_run_forgets_its_snapshots_and_keeps_its_checkpoint(tmp_path, state):
    from editloop.db.models import TrainingRun
    from trainers.run_mirror import drop_snapshots

    sessions, store = state
    run_dir = tmp_path / "run3"
    (run_dir / "snapshots").mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"step 60")
    (run_dir / "snapshots" / "step-000030.pt").write_bytes(b"weights at 30")
    (run_dir / "snapshots" / "step-000060.pt").write_bytes(b"weights at 60")
    with sessions.begin() as s:
        s.add(TrainingRun(id="run3", kind="feedback-pefl", status="running"))
    push(sessions, store, "run3", run_dir)
    assert drop_snapshots(sessions, store, "run3") == 0  # still running: a resume may need them
    with sessions.begin() as s:
        s.get(TrainingRun, "run3").status = "succeeded"
    with sessions() as s:
        snapshot_keys = [r.key for r in s.scalars(select(RunFile).where(RunFile.name.startswith("snapshots/")))]
    assert drop_snapshots(sessions, store, "run3") == 2
    with sessions() as s:
        assert [r.name for r in s.scalars(select(RunFile).where(RunFile.run_id == "run3"))] == ["checkpoint.pt"]
    assert not any(store.exists(k) for k in snapshot_keys)
