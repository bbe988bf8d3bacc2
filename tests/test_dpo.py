"""Diffusion-DPO for the inpainting editor: the loss, the labels it reads, the run lifecycle it shares with the
feedback stages (gate, one version, resume after SIGKILL) and the CLI on a real worker."""

import math
import subprocess
import sys
import uuid

import pytest
import torch
from conftest import promote_rewards, purge, run_killed_once, worker_state
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun
from editloop.labels.simulated import LabelPlan, render_candidate_sets, simulate_labels
from editloop.models.reward import save_reward, tiny_reward
from editloop.world.annotators import SimulatedAnnotator
from trainers.feedback.dpo import dpo_data, dpo_loss
from trainers.feedback.run import run_feedback_stage
from trainers.reward.data import NotEnoughLabels

TINY = {"steps": 3, "batch_size": 2, "checkpoint_every": 1, "eval": {"examples": 3}}


@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    for kind in ("aesthetic", "alignment"):
        save_reward(tiny_reward(kind, seed=1), kind, root / kind, version=f"{kind}-test")
    return root


def labelled_world(tmp_path, reward_dirs, edit_sets: int, t2i_sets: int = 0, rabbitmq: bool = False):
    """A migrated state with promoted (untrained) gate rewards and simulated labels: `edit_sets` inpainting sets and
    `t2i_sets` text-to-image sets (which DPO for the editor must not read), one answer each."""
    env, settings, sessions, store = worker_state(tmp_path, rabbitmq=rabbitmq)
    promote_rewards(sessions, store, reward_dirs, ("aesthetic", "alignment"))
    ids = render_candidate_sets(sessions, store, edit_sets, 3, seed=1, kind="inpaint")
    ids += render_candidate_sets(sessions, store, t2i_sets, 3, seed=2, kind="t2i") if t2i_sets else []
    simulate_labels(sessions, store, ids, LabelPlan([SimulatedAnnotator("sharp", 0.25, seed=3)]))
    return env, settings, sessions, store


def test_the_loss_is_log_2_at_the_reference_and_falls_as_the_model_prefers_the_winner():
    reference = torch.tensor([0.5, 0.4, 0.6, 0.4])  # win errors, then lose errors
    loss, record = dpo_loss(reference.clone(), reference, beta=100.0)
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-6) and record["implicit_accuracy"] == 0.0
    better = reference - torch.tensor([0.01, 0.01, 0.0, 0.0])  # lower error on the winners than the reference
    loss_better, record = dpo_loss(better, reference, beta=100.0)
    assert float(loss_better) < math.log(2) and record["implicit_accuracy"] == 1.0
    worse = reference + torch.tensor([0.01, 0.01, 0.0, 0.0])
    assert float(dpo_loss(worse, reference, beta=100.0)[0]) > math.log(2)


def test_a_dpo_run_reads_edit_labels_only_pins_them_and_is_gated_like_a_stage(tmp_path, reward_dirs):
    _, settings, sessions, store = labelled_world(tmp_path, reward_dirs, edit_sets=24, t2i_sets=6)
    run_id = uuid.uuid4().hex
    out = run_feedback_stage("dpo", run_id, sessions, store, settings, TINY)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run.kind == "feedback-dpo" and run.status == "succeeded"
        labels = run.inputs["labels"]
        assert len(labels) == 24  # the six text-to-image labels are not edits: not read
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == out["version"])).one()
        lineage = row.config["lineage"]
        assert lineage["labels"] == labels and lineage["pairs"] == 24 * 3  # 2N - 3 pairs per 3-image answer
        assert lineage["rewards"] == {"aesthetic": "aesthetic-test", "alignment": "alignment-test"}
    assert out["version"] == f"dpo-{run_id[:12]}" and out["metrics"]["steps_done"] == 3
    assert out["promoted"] == (not out["metrics"]["guard_failures"])
    history = out["metrics"]
    assert 0 <= history["success"] <= 1
    # a label that arrives later does not change the pinned run: its pairs are read again from the same labels
    more = render_candidate_sets(sessions, store, 2, 3, seed=9, kind="inpaint")
    simulate_labels(sessions, store, more, LabelPlan([SimulatedAnnotator("sharp", 0.25, seed=4)]))
    assert dpo_data(sessions, store, run_id).label_ids == labels
    assert len(dpo_data(sessions, store, uuid.uuid4().hex).label_ids) == 26


def test_too_few_labels_stop_the_run_with_the_count_and_the_minimum(tmp_path, reward_dirs):
    _, settings, sessions, store = labelled_world(tmp_path, reward_dirs, edit_sets=5, t2i_sets=30)
    run_id = uuid.uuid4().hex
    with pytest.raises(NotEnoughLabels, match=r"at least 20 valid best/worst labels on edit sets .* 5 usable"):
        run_feedback_stage("dpo", run_id, sessions, store, settings, TINY)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == "failed" and "5 usable" in run.error


def test_the_cli_refuses_bad_dpo_flags_before_queueing(tmp_path):
    env, *_ = worker_state(tmp_path)
    for flags, text in ((["--beta", "0"], "`dpo_beta` must be a finite number > 0"),
                        (["--rewards", "coherence=1"], "unknown reward 'coherence'"),
                        (["--steps", "0"], "`steps` must be >= 1")):
        done = subprocess.run([sys.executable, "-m", "editloop.cli.main", "train", "dpo", *flags], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and text in done.stderr, done.stderr[-500:]


def test_editloop_train_dpo_resumes_after_a_killed_worker_into_one_version(tmp_path, reward_dirs):
    """`editloop train dpo` on RabbitMQ; the worker is SIGKILLed once the run has a checkpoint; the
    next worker gets the unacknowledged task again, resumes from the checkpoint and registers one version."""
    from trainers.celery_app import make_celery

    env, settings, sessions, store = labelled_world(tmp_path, reward_dirs, edit_sets=24, rabbitmq=True)
    purge(make_celery(settings))
    code, stdout, stderr, killed_at, _ = run_killed_once(env, settings, "gpu", "dpo", [
        "train", "dpo", "--steps", "30", "--batch-size", "2", "--eval-examples", "3", "--wait"])
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    assert killed_at < 30  # checkpoints every 25 steps: killed at 25
    with sessions() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
        assert run.kind == "feedback-dpo" and run.status == "succeeded"
        assert run.outputs["metrics"]["steps_done"] == 30
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "editor")).all()
        assert [v.version for v in versions] == [f"dpo-{run.id[:12]}"]
    assert f"queued dpo run {run.id}" in stdout
