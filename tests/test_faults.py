"""Faults (issue 33, item 6): the disk under a training run fills up while it writes a checkpoint.

A real small filesystem (tmpfs of 20 MiB, mounted for the test) holds the run directories and the blob store; the
database lives elsewhere. A reward run fills it at its second checkpoint: the run fails with the cause in its row,
the failed write leaves no temporary file and the previous checkpoint intact, and once there is room again the same
run resumes from that checkpoint and registers exactly one version.
"""

import subprocess
import uuid

import pytest
import torch
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun
from editloop.settings import Settings
from editloop.state import open_state
from trainers.reward.run import RewardTrainConfig, train_reward


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_mid_run_fails_it_by_name_keeps_the_last_checkpoint_and_the_rerun_resumes(tmp_path, small_disk):
    settings = Settings(state_dir=small_disk / "state", blob_dir=small_disk / "blobs",
                        database_url=f"sqlite:///{tmp_path / 'editloop.db'}", broker_url="", result_backend="")
    sessions, store = open_state(settings)
    cfg = RewardTrainConfig(steps=40, eval_every=10, batch_size=16, alignment_train=200, alignment_eval=100,
                            auto_promote=False)
    run_id = uuid.uuid4().hex
    # the checkpoint (11 MB) and best model (3.6 MB) of step 10 fit; step 20's new files do not
    with pytest.raises(OSError, match="No space left on device"):
        train_reward("alignment", run_id, sessions, store, settings, cfg)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == "failed" and "No space left on device" in run.error, run.error
    run_dir = settings.state_dir / "runs" / run_id
    assert not list(run_dir.glob("*.tmp")) and not list((small_disk / "blobs").rglob(".tmp-*"))
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)  # intact, where the run got to
    assert saved["state"]["step"] == 10

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # room again
    out = train_reward("alignment", run_id, sessions, store, settings, cfg)
    assert out["metrics"]["steps_done"] == 40
    assert [h["step"] for h in out["history"]] == [10, 20, 30, 40]  # step 10 from the checkpoint, then on
    with sessions() as s:
        assert s.get(TrainingRun, run_id).status == "succeeded"
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "alignment")).all()
        assert [v.version for v in versions] == [f"alignment-{run_id[:12]}"]
