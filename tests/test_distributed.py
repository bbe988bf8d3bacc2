"""Data-parallel training jobs (trainers/distributed.py): torchrun with 2 gloo processes on CPU, launched by a real
Celery worker, gives the run the single-process run gives (the tolerance below), one checkpoint, one version."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest
import torch
from conftest import start_worker, stop_worker, worker_state
from sqlalchemy import select
from test_reward_training import labelled

from editloop.db.models import ModelVersion, TrainingRun
from trainers.distributed import settings_env, shard
from trainers.reward.run import RewardTrainConfig, _start_model, train_reward

# 2 processes sum their half-batch gradients in another order than 1 process sums the whole batch: the weights
# differ by float rounding only (amplified by Adam's normalisation where a gradient is near zero). Measured
# (aesthetic, 24 steps of 16): the L2 distance between the two runs' weights is 3.0e-4 of the distance training
# moved them, the logged losses agree to 5e-4 relative, the held-out scores exactly.
RELATIVE_TOLERANCE = 1e-3
# A feedback stage (3 steps of 4, the adversarial stage on the committed base): every step's loss, gradient norm,
# critic loss and critic gradient norm agree to 1e-5 relative (measured: 6e-6 at most), the UNet's weights to
# 1.3e-3 of the distance training moved them: three Adam steps move a parameter by about lr whatever the size of
# its gradient, so the float-rounding differences of near-zero gradients show in the weights, not in the steps.
# An alignment round's editor (4 steps of 4): 1.1e-5.
STEP_TOLERANCE = 1e-4
FEEDBACK_TOLERANCE = 5e-3


def l2(tensors: dict[str, torch.Tensor]) -> float:
    return sum(float((t.float() ** 2).sum()) for t in tensors.values()) ** 0.5
SMALL = RewardTrainConfig(steps=24, batch_size=16, eval_every=12, auto_promote=False)  # the CLI's other defaults


@dataclass
class Batch:
    prompts: list[str]
    images: torch.Tensor
    mask: torch.Tensor | None


def test_shard_splits_every_field_and_refuses_an_uneven_batch() -> None:
    batch = Batch(list("abcdef"), torch.arange(6), None)
    halves = [shard(batch, r, 2) for r in range(2)]
    assert halves[0].prompts == list("abc") and halves[1].images.tolist() == [3, 4, 5] and halves[1].mask is None
    assert shard(batch, 0, 1) is batch
    with pytest.raises(ValueError, match="a batch of 6 does not split over 4 processes.*EDITLOOP_TRAIN_PROCS"):
        shard(batch, 0, 4)


def test_settings_reach_the_job_processes_with_their_secrets(tmp_path) -> None:
    from pydantic import SecretStr

    from editloop.settings import Settings

    settings = Settings(state_dir=tmp_path, token=SecretStr("t0k"), train_procs=2, insecure_public=True)
    env = settings_env(settings)
    assert env["EDITLOOP_TOKEN"] == "t0k" and env["EDITLOOP_TRAIN_PROCS"] == "2"
    again = Settings(**{k.removeprefix("EDITLOOP_").lower(): v for k, v in env.items()})
    assert again.token.get_secret_value() == "t0k" and again.train_procs == 2
    assert {k: v for k, v in again.model_dump().items() if k != "token"} == \
        {k: v for k, v in settings.model_dump().items() if k != "token"}


def test_a_two_process_job_from_the_queue_matches_the_single_process_run(tmp_path) -> None:
    env, settings, sessions, store = worker_state(tmp_path)
    labelled((settings, sessions, store), n_sets=40, seed=5)
    single = train_reward("aesthetic", uuid.uuid4().hex, sessions, store, settings, SMALL)

    worker = start_worker("gpu", "ddp", {**env, "EDITLOOP_TRAIN_PROCS": "2", "EDITLOOP_PROMOTION_FLOOR_ALPHA": "1"})
    try:
        args = ["--kind", "aesthetic", "--steps", str(SMALL.steps), "--batch-size", str(SMALL.batch_size),
                "--eval-every", str(SMALL.eval_every), "--no-promote", "--wait"]
        done = subprocess.run([sys.executable, "-m", "editloop.cli.main", "train", "reward", *args], env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        stop_worker(worker)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    with sessions() as s:
        runs = {r.id: r for r in s.scalars(select(TrainingRun))}
        assert len(runs) == 2 and all(r.status == "succeeded" for r in runs.values())
        (ddp_id,) = [i for i in runs if runs[i].outputs["version"] != single["version"]]
        (one_id,) = [i for i in runs if i != ddp_id]
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "aesthetic")).all()
        assert sorted(v.version for v in versions) == sorted([single["version"], runs[ddp_id].outputs["version"]])
        config = runs[ddp_id].inputs["config"]
    assert RewardTrainConfig(**config) == SMALL
    run_dir = settings.state_dir / "runs" / ddp_id
    assert "editloop-rank 1/2" in (run_dir / "job.log").read_text(), "the job did not run 2 processes"
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "checkpoint.pt", "job-data.pt"]  # one checkpoint

    one = torch.load(settings.state_dir / "runs" / one_id / "checkpoint.pt", weights_only=False)
    two = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert one["state"]["step"] == two["state"]["step"] == SMALL.steps
    start_model, _ = _start_model("aesthetic", None, SMALL)
    start = start_model.state_dict()
    moved = l2({k: one["model"][k] - start[k] for k in start})
    diff = l2({k: one["model"][k] - two["model"][k] for k in start})
    print(f"training moved the weights by {moved:.3e} (L2); 2 processes vs 1 differ by {diff:.3e}")
    assert diff <= RELATIVE_TOLERANCE * moved, f"2 processes differ from 1 by {diff:.2e} (moved {moved:.2e})"
    losses = [(a["loss"], b["loss"]) for a, b in zip(one["state"]["history"], two["state"]["history"])]
    assert len(losses) == 2 and all(abs(a - b) <= RELATIVE_TOLERANCE * a for a, b in losses), losses
    assert [h["eval"] for h in one["state"]["history"]] == [h["eval"] for h in two["state"]["history"]]


def test_a_two_process_feedback_stage_matches_the_single_process_run(tmp_path) -> None:
    """The adversarial stage (PeFL's step and the coherence critic's step, both with their gradients averaged over
    the ranks) as a 2-process job against the same run in one process: same examples, same noise rows, one
    checkpoint, the weights equal within the tolerance."""
    from conftest import promote_rewards

    from editloop.models.reward import save_reward, tiny_reward
    from trainers.feedback.run import run_feedback_stage

    _, settings, sessions, store = worker_state(tmp_path)
    rewards = tmp_path / "rewards"
    for kind in ("aesthetic", "alignment", "coherence"):
        save_reward(tiny_reward(kind, seed=1), kind, rewards / kind, version=f"{kind}-test")
    promote_rewards(sessions, store, rewards)
    config = {"steps": 3, "batch_size": 4, "checkpoint_every": 3, "eval": {"examples": 3, "auto_promote": False}}
    one_id, two_id = uuid.uuid4().hex, uuid.uuid4().hex
    run_feedback_stage("adversarial", one_id, sessions, store, settings, config)
    two = run_feedback_stage("adversarial", two_id, sessions, store, settings.model_copy(update={"train_procs": 2}),
                             config)
    run_dir = settings.state_dir / "runs" / two_id
    assert "editloop-rank 2/2" in (run_dir / "job.log").read_text(), "the job did not run 2 processes"
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["checkpoint.pt", "trained-unet.pt"]  # one checkpoint
    assert two["version"] == f"adversarial-{two_id[:12]}" and two["metrics"]["steps_done"] == 3

    from editloop.models.zoo import load_pipeline

    start = load_pipeline(settings.editor_model, "inpaint", device="cpu", dtype="fp32").unet.state_dict()
    a = torch.load(settings.state_dir / "runs" / one_id / "checkpoint.pt", weights_only=False)
    b = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    for x, y in zip(a["history"], b["history"], strict=True):  # the same steps on the same global batches
        assert x["steps_left"] == y["steps_left"]
        for key in ("loss", "grad_norm", "d_loss", "d_grad_norm"):
            assert abs(x[key] - y[key]) <= STEP_TOLERANCE * abs(x[key]), (key, x[key], y[key])
    moved = l2({k: a["unet"][k] - start[k] for k in start})
    diff = l2({k: a["unet"][k] - b["unet"][k] for k in start})
    print(f"feedback: training moved the UNet by {moved:.3e} (L2); 2 processes vs 1 differ by {diff:.3e}")
    assert moved > 0 and diff <= FEEDBACK_TOLERANCE * moved, f"2 processes differ by {diff:.2e} (moved {moved:.2e})"
    disc_moved = l2({k: a["disc"][k] - b["disc"][k] for k in a["disc"]})
    assert disc_moved <= FEEDBACK_TOLERANCE * l2(a["disc"]), f"the critics differ by {disc_moved:.2e}"


def test_a_two_process_alignment_round_matches_the_single_process_round(tmp_path) -> None:
    """A SeedEdit round's editor training as a 2-process job (the worker makes and filters the pairs once, the job
    trains on them) against the same round in one process: the same rows, noise and timesteps per global batch,
    one checkpoint, the trained editors equal within the tolerance, one version each."""
    from test_align import ALIGN_TINY

    from trainers.align.run import run_align_round

    _, settings, sessions, store = worker_state(tmp_path)
    config = {**ALIGN_TINY, "auto_promote": False, "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 4}}
    one = run_align_round("align-one", sessions, store, settings, config)
    two = run_align_round("align-two", sessions, store, settings.model_copy(update={"train_procs": 2}), config)
    run_dir = settings.state_dir / "runs" / "align-two"
    assert "editloop-rank 2/2" in (run_dir / "job.log").read_text(), "the job did not run 2 processes"
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["editor.pt", "job-pairs.pt"]  # one checkpoint
    assert one["filter"] == two["filter"] and two["version"] == "align-r1-align-two"
    a = torch.load(settings.state_dir / "runs" / "align-one" / "editor.pt", weights_only=False)
    b = torch.load(run_dir / "editor.pt", weights_only=False)
    for x, y in zip(a["history"], b["history"], strict=True):
        assert abs(x["loss"] - y["loss"]) <= STEP_TOLERANCE * abs(x["loss"]), (x["loss"], y["loss"])
    from trainers.align.editor_train import new_editor

    start = new_editor("causal", "t2i", None, "cpu").unet.state_dict()
    moved = l2({k: a["unet"][k] - start[k] for k in start})
    diff = l2({k: a["unet"][k] - b["unet"][k] for k in start})
    print(f"align: training moved the UNet by {moved:.3e} (L2); 2 processes vs 1 differ by {diff:.3e}")
    assert moved > 0 and diff <= FEEDBACK_TOLERANCE * moved, f"2 processes differ by {diff:.2e} (moved {moved:.2e})"
