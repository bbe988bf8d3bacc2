"""Online GRPO for the instruction editor (trainers/align/grpo.py, lifecycle trainers/align/tuning.py): the sampler's
likelihood is what the loss recomputes, a run scores the editor's own edits against the captions the instructions
ask for, registers one gated version with its guard scores, bad configs are named, and `editloop train grpo
--instruct` runs on a real worker scored by real reward services, SIGKILLed and resumed into one version."""

import copy

import numpy as np
import pytest
import torch
from conftest import promote_rewards, purge, run_killed_once, worker_state
from sqlalchemy import select
from test_grpo import KINDS, reward_dirs, scored_through, served  # noqa: F401  (fixtures)

from editloop.db import ModelVersion, TrainingRun
from editloop.models.instruct import load_instruct_editor
from trainers.align.grpo import instruct_batch, instruct_policy_loss, instruct_rollout, score_edits, training_edits
from trainers.align.tuning import run_instruct_tuning, split_config, training_config
from trainers.feedback.reward_client import LocalScorer
from trainers.feedback.rewards import load_rewards


@pytest.mark.parametrize("arch", ["causal", "concat"])
def test_the_instruct_samplers_likelihood_is_what_the_loss_recomputes(tiny_instruct, arch):
    editor = load_instruct_editor(tiny_instruct[arch], device="cpu")
    cfg = training_config("grpo", {"batch_size": 4, "grpo": {"group": 2}})
    edits = training_edits(cfg, 0, np.random.default_rng(0))
    assert [e.instruction for e in edits[::2]] == [e.instruction for e in edits[1::2]]  # each edit twice in a row
    roll = instruct_rollout(editor, instruct_batch(editor, edits), 4, 1.0, torch.Generator().manual_seed(0))
    assert roll.images.shape == (4, 64, 64, 3) and roll.log_probs.shape == (4, 4)
    assert torch.isfinite(roll.log_probs).all()
    reference = copy.deepcopy(editor)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for index in (0, 3):
        loss, got = instruct_policy_loss(editor, reference, roll, index, advantages, cfg)
        assert got["clipped"] == 0 and got["kl"] == pytest.approx(0, abs=1e-6)  # on-policy: ratio 1, no drift
        assert float(loss) == pytest.approx(-float(advantages.mean()), abs=1e-4)
        loss.backward()  # the gradient reaches the editor's UNet (through the causal input branch too)
    grads = [p.grad for p in editor.unet.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_an_edit_is_scored_against_the_caption_its_instruction_asks_for(reward_dirs):  # noqa: F811
    cfg = training_config("grpo", {"batch_size": 2, "grpo": {"group": 2}})
    edits = training_edits(cfg, 0, np.random.default_rng(1))
    rewards = load_rewards({k: reward_dirs / k for k in KINDS}, {k: f"{k}-test" for k in KINDS})
    scorer = LocalScorer(rewards)
    from editloop.world.render import render

    sources = np.stack([render(e.source) for e in edits])
    targets = np.stack([render(e.target) for e in edits])
    got = score_edits(scorer, ["alignment", "coherence"], targets, edits, sources)
    assert edits[0].target.caption != edits[0].source.caption
    from trainers.feedback.reward_client import ScoreBatch

    expected = scorer.score("alignment", ScoreBatch(targets, [e.target.caption for e in edits], sources,
                                                    np.stack([e.mask for e in edits])))
    assert np.allclose(got["alignment"], expected) and got["coherence"].shape == (2,)


def test_an_instruct_grpo_run_registers_one_gated_version_with_its_guard(tmp_path, tiny_instruct, reward_dirs):  # noqa: F811
    """In-process scoring: the step records the trained rewards and the held-out guard; the version's metrics carry
    the world's success and preservation and the guard's scores next to the served editor's; its lineage names the
    reward versions it was scored by."""
    _, settings, sessions, store = worker_state(tmp_path)
    settings = settings.model_copy(update={"instruct_model": tiny_instruct["causal"]})
    promote_rewards(sessions, store, reward_dirs)
    run_id = "a" * 32
    out = run_instruct_tuning("grpo", run_id, sessions, store, settings,
                              {"steps": 2, "batch_size": 4, "checkpoint_every": 1, "eval_per_kind": 1,
                               "grpo": {"group": 2, "scorer": "in-process", "train_fraction": 0.3,
                                                        "sample_steps": 4}})
    assert out["version"] == f"grpo-{run_id[:12]}"
    metrics = out["metrics"]
    for key in ("success", "preservation", "reward_aesthetic", "coherence", "eval_score"):
        assert key in metrics, key
    assert metrics["steps_done"] == 2 and isinstance(metrics["guard_failures"], list)
    history = torch.load(tmp_path / "state" / "runs" / run_id / "checkpoint.pt", weights_only=False)["history"]
    assert [h["step"] for h in history] == [1, 2]
    assert all(np.isfinite(h["reward_alignment"]) and 0 < h["guard_aesthetic"] and 0 < h["reward_coherence"] < 1
               for h in history)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run.kind == "align-grpo" and run.status == "succeeded"
        (version,) = s.scalars(select(ModelVersion).where(ModelVersion.kind == "instruct")).all()
        lineage = version.config["lineage"]
    assert lineage["method"] == "grpo" and lineage["rewards"] == {k: f"{k}-test" for k in KINDS}
    assert lineage["scorer"]["via"] == "in-process" and lineage["sample_steps"] == 4
    assert metrics["parent_eval_score"] is not None  # the served (committed) editor on the same held-out edits


def test_bad_instruct_grpo_configs_are_named(capsys):
    from editloop.cli.main import main

    bad = [({"grpo": {"group": 3}}, "`batch_size` (8) must be a multiple of `grpo.group` (3)"),
           ({"reward_weights": {"aesthetic": 1.0}}, "`grpo.guard` reward 'aesthetic' is also trained on"),
           ({"tasks": ["erase"]}, "`tasks` does not apply to an instruction editor's GRPO run"),
           ({"grpo": {"scorer": "carrier-pigeon"}}, "`grpo.scorer` must be one of"),
           ({"grpo": [1]}, "`grpo` must be an object of GRPO settings")]
    for config, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            split_config(config, "grpo")
    with pytest.raises(ValueError, match="`method` must be one of"):
        split_config({}, "ppo")
    assert main(["train", "grpo", "--instruct", "--eval-examples", "3"]) == 2
    assert "`--eval-examples` does not apply to --instruct" in capsys.readouterr().err
    assert main(["train", "grpo", "--eval-per-kind", "3"]) == 2
    assert "`--eval-per-kind` applies to --instruct runs" in capsys.readouterr().err


def test_editloop_train_grpo_instruct_scores_through_the_services_and_resumes_after_a_kill(
        tmp_path, tiny_instruct, reward_dirs, served):  # noqa: F811
    """`editloop train grpo --instruct` on RabbitMQ, scored by real reward services over gRPC; the worker is
    SIGKILLed at the run's first checkpoint; the next worker resumes it into one instruct version."""
    from trainers.celery_app import make_celery

    env, settings, sessions, store = worker_state(tmp_path, rabbitmq=True)
    env = {**env, "EDITLOOP_INSTRUCT_MODEL": str(tiny_instruct["causal"])}
    promote_rewards(sessions, store, reward_dirs)
    purge(make_celery(settings))
    addresses = [f"--reward-address={k}={a}" for k, a in served.addresses.items()]
    code, stdout, stderr, killed_at, checkpoint = run_killed_once(env, settings, "gpu", "igrpo", [
        "train", "grpo", "--instruct", "--steps", "4", "--checkpoint-every", "2", "--batch-size", "2",
        "--group", "2", "--train-fraction", "0.3", "--sample-steps", "4", "--scorer", "services",
        *addresses, "--eval-per-kind", "1", "--wait"])
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    assert killed_at < 4
    with sessions() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
        assert run.kind == "align-grpo" and run.status == "succeeded", run.error
        assert run.outputs["metrics"]["steps_done"] == 4
    history = scored_through(sessions, run, "instruct", served, checkpoint)
    assert all(0 < h["guard_aesthetic"] and 0 < h["reward_coherence"] < 1 for h in history)
    assert f"queued instruct grpo run {run.id}" in stdout
