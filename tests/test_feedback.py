"""ByteEdit feedback learning: PeFL, the adversarial critic, progressive acceleration, stage runs, the chain."""

import json
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch
from conftest import promote_rewards, purge, start_worker, worker_state
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun
from editloop.models.base import base_model_dir, load_base
from editloop.models.reward import CoherenceReward, save_reward, tiny_reward
from editloop.models.zoo import load_pipeline, set_timestep_spacing
from editloop.registry import PromotionRefused, promote, promoted
from editloop.settings import Settings
from services.core.sampling import ModelDefaults
from trainers.feedback.adversarial import AdversarialConfig, discriminator_loss, discriminator_step
from trainers.feedback.examples import TASKS, feedback_examples, make_example
from trainers.feedback.loop import Diverged, FeedbackConfig, make_trainable, train_feedback
from trainers.feedback.pefl import PeflSchedule, decode, predict_x0, prepare
from trainers.feedback.progressive import PHASE_1, PHASE_2, stage_config
from trainers.feedback.rewards import load_rewards, reward_losses
from trainers.feedback.run import run_feedback_stage

TINY = {"steps": 2, "batch_size": 2, "checkpoint_every": 1, "eval": {"examples": 3}}


@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    for kind in ("aesthetic", "alignment", "coherence"):
        save_reward(tiny_reward(kind, seed=1), kind, root / kind, version=f"{kind}-test")
    return root


@pytest.fixture
def pipe():
    p = load_base("inpaint", device="cpu")
    p.unet.float()
    p.text_encoder.float()
    return p


def rewards_of(reward_dirs, kinds=("aesthetic", "alignment", "coherence")):
    return load_rewards({k: reward_dirs / k for k in kinds})


@pytest.fixture
def world(tmp_path, reward_dirs):
    _, settings, sessions, store = worker_state(tmp_path)
    promote_rewards(sessions, store, reward_dirs)
    return settings, sessions, store


def test_schedules_and_presets_follow_the_paper():
    assert (PHASE_1.steps, PHASE_1.start, PHASE_1.stop) == (20, 15, 10)
    assert (PHASE_2.steps, PHASE_2.start, PHASE_2.stop) == (8, 6, 3)
    assert stage_config("pefl").adversarial is None and stage_config("pefl").schedule == PHASE_1
    assert stage_config("adversarial").adversarial is not None
    assert stage_config("progressive").schedule == PHASE_2
    assert stage_config("progressive").timestep_spacing == "trailing" and stage_config("pefl").timestep_spacing is None
    with pytest.raises(ValueError, match=r"1 <= T2 < T1 <= T, got \(T, T1, T2\) = \(8, 3, 6\)"):
        PeflSchedule(8, 3, 6)
    with pytest.raises(ValueError, match="`stage` must be one of"):
        FeedbackConfig(stage="kto")
    assert stage_config("dpo").adversarial is None  # Diffusion-DPO runs in the same lifecycle, without a critic
    with pytest.raises(ValueError, match="unknown feedback config field 'stepz'"):
        stage_config("pefl", stepz=3)
    with pytest.raises(ValueError, match=r"`tasks` must be a non-empty subset"):
        FeedbackConfig(tasks=("inpaint", "paint"))


def test_examples_cover_the_three_tasks_with_sensible_masks():
    examples = feedback_examples(9, 0)
    assert [e.task for e in examples] == list(TASKS) * 3
    for e in examples:
        assert 0 < e.mask.mean() < 1
        if e.task == "erase":  # the object must go: the regulariser only looks outside the mask
            assert (e.reference == 1 - e.mask).all()
        else:
            assert e.reference.all()
    assert [e.prompt for e in feedback_examples(9, 0)] == [e.prompt for e in examples]  # deterministic


def test_masks_that_cover_nothing_or_everything_are_refused(pipe):
    rng = np.random.default_rng(0)
    ok, empty, full = (make_example(rng, "inpaint") for _ in range(3))
    object.__setattr__(empty, "mask", np.zeros_like(empty.mask))
    object.__setattr__(full, "mask", np.ones_like(full.mask))
    with pytest.raises(ValueError, match="`mask` of example 1 covers nothing"):
        prepare(pipe, [ok, empty])
    with pytest.raises(ValueError, match="`mask` of example 1 covers the whole image"):
        prepare(pipe, [ok, full])


@pytest.mark.parametrize("schedule", ["sd", "zero-snr-v"])
def test_a_pefl_step_sends_gradients_to_the_unet_only(pipe, reward_dirs, schedule, monkeypatch):
    from diffusers import DDIMScheduler

    from editloop.models.configs import SCHEDULES

    monkeypatch.setattr(pipe, "scheduler", DDIMScheduler(**SCHEDULES[schedule]))  # v-prediction models too
    rewards = rewards_of(reward_dirs, ("aesthetic", "alignment"))
    batch = prepare(pipe, feedback_examples(2, 3))
    make_trainable(pipe, FeedbackConfig())
    x0, steps_left, drift = predict_x0(pipe, batch, PHASE_1, torch.Generator().manual_seed(0))
    assert 1 <= steps_left <= PHASE_1.stop and x0.shape == batch.source_latents.shape and drift is None
    loss, scores = reward_losses(rewards, {"aesthetic": 1.0, "alignment": 1.0}, decode(pipe, x0), batch.prompts)
    loss.backward()
    assert torch.isfinite(loss) and set(scores) == {"reward_aesthetic", "reward_alignment"}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.unet.parameters())
    frozen = [*pipe.vae.parameters(), *pipe.text_encoder.parameters(),
              *[p for m, _ in rewards.preference.values() for p in m.parameters()]]
    assert all(p.grad is None for p in frozen)


def test_rewards_are_normalised_on_clean_sources(reward_dirs):
    from editloop.models.data import to_tensor
    from trainers.feedback.rewards import calibrate, normalised, preference_scores

    rewards = rewards_of(reward_dirs, ("aesthetic", "alignment"))
    examples = feedback_examples(12, 5)
    images, prompts = to_tensor([e.source for e in examples]), [e.prompt for e in examples]
    scale = calibrate(rewards, images, prompts)
    assert set(scale) == {"aesthetic", "alignment"} and all(std > 0 for _, std in scale.values())
    z = normalised(rewards, "aesthetic", preference_scores(rewards, "aesthetic", images, prompts))
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3


def test_reward_weights_per_task_scale_each_examples_reward_loss(reward_dirs):
    import torch.nn.functional as F

    from editloop.cli.train import parse_task_scales
    from editloop.models.data import to_tensor
    from trainers.feedback.loop import task_scales
    from trainers.feedback.rewards import preference_scores

    rewards = rewards_of(reward_dirs, ("aesthetic", "alignment"))
    examples = feedback_examples(3, 11)  # inpaint, erase, outpaint
    images, prompts = to_tensor([e.source for e in examples]), [e.prompt for e in examples]
    cfg = FeedbackConfig(task_reward_scale={"erase": 0.0, "outpaint": 4.0})
    scale = task_scales(cfg, [e.task for e in examples])
    assert scale.tolist() == [1.0, 0.0, 4.0] and task_scales(FeedbackConfig(), ["erase"]) is None
    weights = {"aesthetic": 1.0, "alignment": 0.5}
    loss, _ = reward_losses(rewards, weights, images, prompts, scale)
    expected = sum(w * (-F.logsigmoid(preference_scores(rewards, k, images, prompts)) * scale).mean()
                   for k, w in weights.items())
    torch.testing.assert_close(loss, expected)
    plain, _ = reward_losses(rewards, weights, images, prompts)
    torch.testing.assert_close(reward_losses(rewards, weights, images, prompts, torch.ones(3))[0], plain)
    assert FeedbackConfig.from_dict(cfg.to_dict()).task_reward_scale == {"erase": 0.0, "outpaint": 4.0}
    assert parse_task_scales(["outpaint=4", "erase=0"]) == {"outpaint": 4.0, "erase": 0.0}
    with pytest.raises(ValueError, match="`task_reward_scale` names unknown task 'paint'"):
        FeedbackConfig(task_reward_scale={"paint": 1.0})
    with pytest.raises(ValueError, match=r"`task_reward_scale\['erase'\]` must be a finite number >= 0, got -1"):
        FeedbackConfig(task_reward_scale={"erase": -1})
    with pytest.raises(ValueError, match="must be TASK=SCALE .* got 'outpaint:4'"):
        parse_task_scales(["outpaint:4"])
    with pytest.raises(ValueError, match=r"`task_reward_scale\['inpaint'\]` must be a finite number >= 0, got nan"):
        parse_task_scales(["inpaint=nan"])


def test_a_stage_trains_samples_and_saves_with_trailing_timesteps(tmp_path, reward_dirs):
    from trainers.feedback.pefl import ddim

    pipe = load_base("inpaint", device="cpu", dtype="fp32")
    assert int(ddim(pipe, 8).timesteps[0]) == 999  # the committed base samples with trailing timesteps
    set_timestep_spacing(pipe, "leading")  # Stable Diffusion's spacing, with steps_offset 1
    assert int(ddim(pipe, 8).timesteps[0]) == 876
    cfg = FeedbackConfig(steps=1, batch_size=2, schedule=PHASE_2, timestep_spacing="trailing")
    train_feedback(pipe, rewards_of(reward_dirs, ("aesthetic", "alignment")), cfg, tmp_path / "run")
    assert [int(t) for t in ddim(pipe, 8).timesteps] == [999, 874, 749, 624, 499, 374, 249, 124]
    pipe.save_pretrained(tmp_path / "model")
    again = load_pipeline(tmp_path / "model", "inpaint", device="cpu", dtype="fp32")
    assert again.scheduler.config.timestep_spacing == "trailing"  # the service samples it as it was trained
    with pytest.raises(ValueError, match="`timestep_spacing` must be one of .* got 'middle'"):
        FeedbackConfig(timestep_spacing="middle")


def test_the_critic_stabilisers(pipe, reward_dirs):
    cfg = AdversarialConfig(warmup_steps=3, d_every=2, d_clip=1e-3, real_label=0.9)
    assert [cfg.generator_active(s) for s in range(5)] == [False, False, False, True, True]
    assert [cfg.discriminator_due(s) for s in range(5)] == [True, False, True, False, True]
    disc = rewards_of(reward_dirs, ("coherence",)).coherence
    source = torch.rand(2, 3, 64, 64) * 2 - 1
    generated = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 20:40, 20:40] = 1
    before = [p.detach().clone() for p in disc.parameters()]
    record = discriminator_step(disc, torch.optim.SGD(disc.parameters(), lr=1.0), generated, source, mask, cfg)
    # clipping: the gradient the optimiser applied has norm <= d_clip, so SGD(lr=1) moved the weights that little
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(disc.parameters(), before)))
    assert record["d_grad_norm"] > cfg.d_clip and float(moved) <= cfg.d_clip * 1.001
    assert not any(p.requires_grad for p in disc.parameters())  # frozen again for the generator's step

    class Confident(CoherenceReward):  # says "real" with certainty everywhere
        def forward(self, images):
            return torch.full_like(images[:, :1], 20.0)

    smoothed = discriminator_loss(Confident(), generated, source, mask, real_label=0.9)
    unsmoothed = discriminator_loss(Confident(), generated, source, mask, real_label=1.0)
    # one-sided smoothing penalises certainty on real pixels; fake and real pixels weigh the same (class balance)
    assert float(smoothed) > float(unsmoothed) > 4.0


def test_training_resumes_exactly_and_a_diverging_run_keeps_its_last_good_checkpoint(tmp_path, reward_dirs):
    cfg = FeedbackConfig(steps=3, batch_size=2, checkpoint_every=1, adversarial=AdversarialConfig(warmup_steps=1))
    straight = load_base("inpaint", device="cpu", dtype="fp32")
    train_feedback(straight, rewards_of(reward_dirs), cfg, tmp_path / "straight")
    resumed = load_base("inpaint", device="cpu", dtype="fp32")
    train_feedback(resumed, rewards_of(reward_dirs), FeedbackConfig(**{**cfg.__dict__, "steps": 2}), tmp_path / "r")
    again = load_base("inpaint", device="cpu", dtype="fp32")
    state = train_feedback(again, rewards_of(reward_dirs), cfg, tmp_path / "r")
    assert state.step == 3 and [h["step"] for h in state.history] == [1, 2, 3]
    for a, b in zip(straight.unet.parameters(), again.unet.parameters()):
        torch.testing.assert_close(a, b)

    broken = rewards_of(reward_dirs)
    with torch.no_grad():
        for p in broken.preference["aesthetic"][0].head.parameters():
            p.fill_(float("nan"))
    longer = FeedbackConfig(**{**cfg.__dict__, "steps": 5})
    with pytest.raises(Diverged, match="loss is nan at step 4; the last good checkpoint is kept"):
        train_feedback(load_base("inpaint", device="cpu", dtype="fp32"), broken, longer, tmp_path / "r")
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == 3


def test_the_kl_term_measures_drift_from_the_start_model_even_after_a_resume(tmp_path, reward_dirs):
    """DPOK's KL trust region: zero while the model is the start model, positive once it moved, with
    gradients to the trained UNet only; a resumed run keeps the start weights as its anchor, not the checkpoint."""
    from trainers.feedback.loop import start_anchor

    pipe = load_base("inpaint", device="cpu", dtype="fp32")
    anchor = start_anchor(pipe.unet)
    batch = prepare(pipe, feedback_examples(2, 3))
    at_start = predict_x0(pipe, batch, PHASE_1, torch.Generator().manual_seed(0), anchor=anchor).drift
    assert float(at_start.detach().sum()) == 0
    make_trainable(pipe, FeedbackConfig())
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(0.05)
    drift = predict_x0(pipe, batch, PHASE_1, torch.Generator().manual_seed(0), anchor=anchor).drift
    drift.mean().backward()
    assert float(drift.detach().min()) > 0 and all(p.grad is None for p in anchor.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.unet.parameters())

    cfg = FeedbackConfig(steps=2, batch_size=2, checkpoint_every=1, kl_weight=5.0)
    rewards = rewards_of(reward_dirs, ("aesthetic", "alignment"))
    straight = train_feedback(load_base("inpaint", device="cpu", dtype="fp32"), rewards, cfg, tmp_path / "straight")
    assert straight.history[0]["kl"] == 0 and straight.history[1]["kl"] > 0
    train_feedback(load_base("inpaint", device="cpu", dtype="fp32"), rewards,
                   FeedbackConfig(**{**cfg.__dict__, "steps": 1}), tmp_path / "r")
    resumed = train_feedback(load_base("inpaint", device="cpu", dtype="fp32"), rewards, cfg, tmp_path / "r")
    assert resumed.history[1]["kl"] == pytest.approx(straight.history[1]["kl"], rel=1e-5)
    with pytest.raises(ValueError, match="`kl_weight` must be a finite number >= 0"):
        FeedbackConfig(kl_weight=-1.0)


def test_checkpoint_selection_keeps_the_best_snapshot_and_scores_each_once(tmp_path, reward_dirs):
    from trainers.feedback.selection import snapshot_path

    cfg = FeedbackConfig(steps=3, batch_size=2, checkpoint_every=1, snapshot_every=2)
    rewards = rewards_of(reward_dirs, ("aesthetic", "alignment"))
    two = load_base("inpaint", device="cpu", dtype="fp32")  # what the EMA weights are after two steps
    train_feedback(two, rewards, FeedbackConfig(**{**cfg.__dict__, "steps": 2, "snapshot_every": 0}), tmp_path / "2")
    start = [p.detach().clone() for p in load_base("inpaint", device="cpu", dtype="fp32").unet.parameters()]
    scored = []

    def closeness_to_start(step: int) -> float:  # a stand-in validation measure: least drift wins
        scored.append(step)
        return -float(sum(((p.detach() - s) ** 2).sum() for p, s in zip(pipe.unet.parameters(), start)))

    pipe = load_base("inpaint", device="cpu", dtype="fp32")
    state = train_feedback(pipe, rewards, cfg, tmp_path / "run", select=closeness_to_start)
    assert sorted(state.selection.scores) == [2, 3] and scored == [2, 3]  # every 2 steps and the last
    assert state.selection.step == 2 and state.selection.scores[2] > state.selection.scores[3]
    assert snapshot_path(tmp_path / "run", 2).is_file()
    for a, b in zip(pipe.unet.parameters(), two.unet.parameters()):  # the chosen snapshot is the 2-step model
        torch.testing.assert_close(a, b)
    # a worker lost after selection began: the rerun resumes from the checkpoint and re-scores nothing
    again = load_base("inpaint", device="cpu", dtype="fp32")
    assert train_feedback(again, rewards, cfg, tmp_path / "run", select=lambda step: scored.append(step) or 0.0
                          ).selection.step == 2
    assert scored == [2, 3]
    tied = tmp_path / "tied"
    assert train_feedback(load_base("inpaint", device="cpu", dtype="fp32"), rewards, cfg, tied,
                          select=lambda step: 1.0).selection.step == 2  # ties: the earliest (least drift)
    with pytest.raises(ValueError, match="`snapshot_every` must be >= 0 \\(0: no snapshots\\), got -1"):
        FeedbackConfig(snapshot_every=-1)


def test_the_review_gate_needs_the_reviewers_to_prefer_the_candidate():
    from editloop.labels.review import Review, majority, preference_p_value, review_guard
    from editloop.labels.stats import GSB
    from editloop.world.render import render
    from trainers.feedback.review import side_by_side
    from trainers.feedback.run import promotion_guards

    examples = feedback_examples(6, 5)
    right = np.stack([render(e.target) for e in examples])  # the intended result of each edit
    noise = np.random.default_rng(0).integers(0, 256, right.shape, dtype=np.uint8)
    better = side_by_side(right, noise, examples)
    every, pairs = better.verdicts, better.pairs
    assert every.good > every.bad and every.good + every.same + every.bad == 3 * len(examples)  # 3 reviewers
    assert pairs.good + pairs.same + pairs.bad == len(examples) and pairs.good > pairs.bad  # one per edit
    same = side_by_side(right, right, examples)
    assert same == Review(GSB(0, 18, 0), GSB(0, 6, 0))  # identical edits: "same" every time
    metrics = {"feedback_score": 0.6, "success": 0.8}
    reference = {"feedback_score": 0.5, "success": 0.8}
    assert promotion_guards(metrics, reference, 0.02, review=better) == []
    assert promotion_guards(metrics, reference, 0.02) == []
    assert promotion_guards(metrics, reference, 0.02, review=same)[0].startswith(
        "the reviewers do not prefer it")  # indifference is not a reason to promote
    assert promotion_guards(metrics, reference, 0.02, review=Review(GSB(9, 10, 5), GSB(4, 10, 4))) == [
        "the reviewers do not prefer it to the served model side by side (pairs won / tied / lost by majority "
        "4 / 10 / 4, sign test p = 0.637, needs < 0.05; verdicts good / same / bad 9 / 10 / 5)"]
    # a coin-flip margin is not a preference (the round that promoted on 124 / 122: BENCHMARKS.md); a clear one is
    assert preference_p_value(GSB(3, 5, 0)) == 1 / 8 and review_guard(Review(GSB(9, 15, 0), GSB(3, 5, 0))) is not None
    assert review_guard(Review(GSB(0, 0, 0), GSB(124, 42, 122))) is not None
    assert review_guard(Review(GSB(0, 0, 0), GSB(40, 50, 20))) is None
    # the sign test counts pairs, not verdicts: three reviewers agreeing on 4 pairs are 4 pieces of evidence, not 12
    agreeing = majority([["good"] * 3] * 4 + [["same"] * 3] * 3)
    assert agreeing == Review(GSB(12, 9, 0), GSB(4, 3, 0)) and review_guard(agreeing) is not None
    assert preference_p_value(agreeing.verdicts) < 0.05 < preference_p_value(agreeing.pairs)
    assert majority([["good", "bad", "same"], []]) == Review(GSB(1, 1, 1), GSB(0, 1, 0))  # a split pair ties
    with pytest.raises(ValueError, match="side-by-side review needs one image per example"):
        side_by_side(right[:2], noise, examples)


def test_a_faster_candidate_needs_only_to_be_shown_no_worse():
    from editloop.labels.review import Review, accelerated, noninferiority_p_value, review_guard
    from editloop.labels.stats import GSB
    from trainers.feedback.run import EvalConfig, promotion_guards

    level = Review(GSB(0, 0, 0), GSB(30, 40, 26))  # about level on 96 edits: not better, plausibly not worse
    assert review_guard(level) is not None  # no preference ...
    assert review_guard(level, margin=0.1) is None  # ... but no worse than 0.1 net preference at p < 0.05
    assert noninferiority_p_value(level.pairs, 0.1) < 0.05 < noninferiority_p_value(level.pairs, 0.0)
    worse = Review(GSB(0, 0, 0), GSB(25, 40, 31))  # net -0.0625: its lower bound falls below -0.1
    assert review_guard(worse, margin=0.1).startswith(
        "the reviewers do not find it as good as the served model side by side (pairs won / tied / lost by majority "
        "25 / 40 / 31, net preference -0.062, non-inferiority at margin 0.1: p = 0.")
    assert noninferiority_p_value(GSB(0, 0, 0), 0.1) == 1.0  # no pairs, no evidence
    assert noninferiority_p_value(GSB(0, 50, 0), 0.1) < 1e-6  # identical every time: no worse
    assert accelerated({"steps": 8}, {"steps": 20}) and not accelerated({"steps": 20}, {"steps": 20})
    metrics = {"feedback_score": 0.6, "success": 0.8, "steps": 8}
    reference = {"feedback_score": 0.5, "success": 0.8, "steps": 20}
    assert promotion_guards(metrics, reference, 0.02, review=level, margin=0.1) == []
    assert promotion_guards(metrics, reference, 0.02, review=level)[0].startswith("the reviewers do not prefer it")
    # "as good, faster": its reward score may fall a little (FASTER_SCORE_TOLERANCE), not more
    slightly_lower = {**metrics, "feedback_score": 0.495}
    assert promotion_guards(slightly_lower, reference, 0.02, review=level, margin=0.1) == []
    assert promotion_guards(slightly_lower, reference, 0.02) == ["feedback score 0.4950 is not above the served "
                                                                 "model's 0.5000"]
    assert promotion_guards({**metrics, "feedback_score": 0.48}, reference, 0.02, review=level, margin=0.1) == [
        "feedback score 0.4800 fell more than 0.01 below the served model's 0.5000"]
    with pytest.raises(ValueError, match="`eval.review_margin` must be in \\[0, 1\\), got 1.5"):
        EvalConfig(review_margin=1.5)
    with pytest.raises(ValueError, match="`review` must be one of \\['none', 'panel', 'people'\\], got 'crowd'"):
        EvalConfig(review="crowd")


def test_a_reviewed_stage_selects_a_snapshot_on_its_own_validation_set(world):
    settings, sessions, store = world
    config = {**TINY, "snapshot_every": 1, "eval": {"examples": 3, "review": "panel"}}
    out = run_feedback_stage("pefl", uuid.uuid4().hex, sessions, store, settings, config)
    m = out["metrics"]
    assert m["selected_step"] in (1, 2) and sorted(m["selection_scores"]) == ["1", "2"]
    assert all(-1 <= v <= 1 for v in m["selection_scores"].values())  # the reviewers' net preference
    assert m["review"]["good"] + m["review"]["same"] + m["review"]["bad"] == 3 * 3  # 3 reviewers x 3 edits
    assert m["review"]["pairs"]["won"] + m["review"]["pairs"]["tied"] + m["review"]["pairs"]["lost"] == 3
    won, lost = m["review"]["pairs"]["won"], m["review"]["pairs"]["lost"]
    preferred = won > lost and m["review"]["p_value"] < 0.05
    assert preferred or any("do not prefer it" in g for g in m["guard_failures"])
    assert out["promoted"] == (not m["guard_failures"])


def test_the_cli_checks_a_feedback_config_before_it_queues_anything():
    from editloop.cli.train import check_feedback_config

    with pytest.raises(ValueError, match="`snapshot_every` must be >= 0"):
        check_feedback_config(["pefl", "progressive"], {"snapshot_every": -5}, {})
    with pytest.raises(ValueError, match="`eval.examples` must be >= 1, got 0"):
        check_feedback_config(["pefl"], {}, {"examples": 0})
    with pytest.raises(ValueError, match="`eval.review_margin` must be in \\[0, 1\\), got -0.1"):
        check_feedback_config(["progressive"], {}, {"review": "people", "review_margin": -0.1})
    with pytest.raises(ValueError, match="`kl_weight` must be a finite number >= 0 .* got nan"):
        check_feedback_config(["pefl"], {"kl_weight": float("nan")}, {})
    check_feedback_config(["pefl", "adversarial"], {"steps": 4, "snapshot_every": 2, "kl_weight": 0.5},
                          {"review": "panel"})


def test_a_stage_run_registers_a_candidate_and_promotes_only_a_better_one(world):
    settings, sessions, store = world
    out = run_feedback_stage("pefl", uuid.uuid4().hex, sessions, store, settings, TINY)
    metrics = out["metrics"]
    assert metrics["steps"] == 20 and metrics["parent"]["steps"] == 20 and 0 <= metrics["success"] <= 1
    assert out["promoted"] == (not metrics["guard_failures"])
    assert store.get(out["curves_key"])[:8] == b"\x89PNG\r\n\x1a\n"
    with sessions() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == out["version"])).one()
        assert row.kind == "editor" and row.config["lineage"]["rewards"]["aesthetic"] == "aesthetic-test"
        if metrics["guard_failures"]:
            with pytest.raises(PromotionRefused, match="not above the served model's|fell more than"):
                promote(s, "editor", row.version)
    # the progressive phase starts from it, is trained for 8 steps and says so; the editor samples it at 8
    fast = run_feedback_stage("progressive", uuid.uuid4().hex, sessions, store, settings,
                              {**TINY, "adversarial": None}, parent_version=out["version"])
    assert fast["start_version"] == out["version"] and fast["metrics"]["steps"] == 8
    # gated against the model served now (the first candidate if it was promoted, else the base), not its start:
    # losses within the tolerance at each stage must not add up through a chain into a promotion
    from editloop.models.model_dir import model_version
    from editloop.registry import fetch_model_dir
    from trainers.feedback.run import base_floor_guard, promotion_guards

    fm = fast["metrics"]
    assert fm["reference_version"] == (out["version"] if out["promoted"] else model_version(base_model_dir("inpaint")))
    assert fm["parent_eval_score"] == fm["reference"]["feedback_score"]
    assert fm["review_margin"] == 0.1  # 8 steps against a 20-step served model: "as good, faster"
    # and, when a fine-tuned model is served, non-inferior to the base as well (the floor under every editor gate)
    assert ("base" in fm) == out["promoted"]
    assert fm["guard_failures"] == (promotion_guards(fm, fm["reference"], 0.02, margin=fm["review_margin"])
                                    + base_floor_guard(fm, fm.get("base"), 0.02))
    if not out["promoted"]:
        assert fm["parent"] != fm["reference"]  # its start model (the refused candidate) was evaluated apart

    model_dir = fetch_model_dir(store, fast["checkpoint_key"], settings.state_dir / "models")
    meta = json.loads((model_dir / "editloop.json").read_text())
    assert meta["default_steps"] == 8 and meta["stage"] == "progressive"
    assert ModelDefaults.from_dir(model_dir).steps == 8
    scheduler = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["timestep_spacing"] == "trailing"


def test_bad_inputs_are_refused_with_the_reason(world, reward_dirs, tmp_path):
    settings, sessions, store = world
    with pytest.raises(ValueError, match="is a aesthetic reward model, not coherence"):
        load_rewards({"coherence": reward_dirs / "aesthetic"})
    t2i = Settings(state_dir=settings.state_dir, device="cpu", editor_model=base_model_dir("t2i"))
    run_id = uuid.uuid4().hex
    with pytest.raises(ValueError, match="has no inpainting UNet"):
        run_feedback_stage("pefl", run_id, sessions, store, t2i, TINY)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == "failed" and "has no inpainting UNet" in run.error
        for row in s.scalars(select(ModelVersion).where(ModelVersion.kind == "coherence")):
            row.status = "retired"
        s.commit()
    with pytest.raises(ValueError, match="needs a promoted coherence reward model; train one with"):
        run_feedback_stage("adversarial", uuid.uuid4().hex, sessions, store, settings, TINY)


def test_a_chain_survives_a_killed_worker_and_ends_in_one_version_per_stage(tmp_path, reward_dirs):
    """pefl -> progressive as one Celery chain on RabbitMQ; the worker is SIGKILLed once the first stage has a
    checkpoint; the next worker gets the unacknowledged task again, resumes, and the chain runs on."""
    from celery.result import AsyncResult

    from editloop.cli.train import enqueue_feedback_chain
    from trainers.celery_app import make_celery

    env, settings, sessions, store = worker_state(tmp_path, rabbitmq=True)
    promote_rewards(sessions, store, reward_dirs, ("aesthetic", "alignment"))
    app = make_celery(settings)
    purge(app)

    first = start_worker("gpu", "fb", env)
    config = {"steps": 6, "batch_size": 2, "checkpoint_every": 1, "adversarial": None, "eval": {"examples": 3}}
    run_ids = enqueue_feedback_chain(settings, ["pefl", "progressive"], config, "test")
    checkpoint = settings.state_dir / "runs" / run_ids[0] / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not checkpoint.is_file():
        time.sleep(0.2)
    assert checkpoint.is_file(), "the first worker never checkpointed"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = torch.load(checkpoint, weights_only=False)["step"]
    second = start_worker("gpu", "fb", env)
    try:
        result = AsyncResult(run_ids[1], app=app).get(timeout=900)
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert killed_at < 6
    with sessions() as s:
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "editor")).all()
        assert sorted(v.version for v in versions) == sorted([f"pefl-{run_ids[0][:12]}", result["version"]])
        runs = [s.get(TrainingRun, r) for r in run_ids]
        assert [r.status for r in runs] == ["succeeded", "succeeded"]
        assert runs[0].outputs["metrics"]["steps_done"] == 6
        assert result["start_version"] == runs[0].outputs["version"] and result["metrics"]["steps"] == 8
        ever_promoted = promoted(s, "editor")
        assert ever_promoted is None or ever_promoted.version in {v.version for v in versions}


def test_lora_trains_only_adapters_and_merges_back_into_a_plain_unet(tmp_path, reward_dirs):
    pipe = load_base("inpaint", device="cpu", dtype="fp32")
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    cfg = FeedbackConfig(steps=2, batch_size=2, lora_rank=4, lr=1e-2, ema_decay=0.0)
    other = load_base("inpaint", device="cpu", dtype="fp32")
    params = make_trainable(other, cfg)
    names = [n for n, p in other.unet.named_parameters() if p.requires_grad]
    assert len(names) == len(params) > 0 and all("lora" in n for n in names)
    train_feedback(pipe, rewards_of(reward_dirs, ("aesthetic", "alignment")), cfg, tmp_path / "lora")
    merged = pipe.unet.state_dict()
    assert set(merged) == set(base)  # no adapter layers left: it saves and loads like any UNet
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out")) for k in changed)


def test_editloop_train_progressive_runs_the_whole_round_on_a_real_worker(tmp_path, reward_dirs):
    """The CLI's chain pefl -> adversarial -> progressive on the embedded broker; each stage starts from the one
    before, the last one is an 8-step model, and a version is promoted exactly when its gate passed."""
    env, settings, sessions, store = worker_state(tmp_path)
    promote_rewards(sessions, store, reward_dirs)
    worker = start_worker("gpu", "fr", env)
    try:
        done = subprocess.run([sys.executable, "-m", "editloop.cli.main", "train", "progressive", "--steps", "2",
                               "--batch-size", "2", "--eval-examples", "3", "--wait"], env=env, capture_output=True,
                              text=True, timeout=1200)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    with sessions() as s:
        runs = s.scalars(select(TrainingRun).order_by(TrainingRun.created_at)).all()
        assert [r.kind for r in runs] == ["feedback-pefl", "feedback-adversarial", "feedback-progressive"]
        assert all(r.status == "succeeded" and r.inputs["trigger"] == "by hand: editloop train progressive"
                   for r in runs)
        outs = [r.outputs for r in runs]
        assert outs[1]["start_version"] == outs[0]["version"] and outs[2]["start_version"] == outs[1]["version"]
        assert outs[2]["metrics"]["steps"] == 8
        critic = json.loads((settings.state_dir / "runs" / runs[1].id / "history.json").read_text())
        assert all("d_loss" in h for h in critic)  # the adversarial stage trained its critic every step
        for out in outs:
            assert out["promoted"] == (not out["metrics"]["guard_failures"])
        assert f"queued progressive run {runs[2].id}" in done.stdout


def test_pefl_reads_the_text_states_the_pipeline_samples_with():
    """PeFL's guided branches (the empty prompt, then the prompts) are the pipeline's own encode_prompt, so
    feedback learning trains the UNet on the conditioning it is sampled with (no attention mask)."""
    import torch

    from trainers.feedback.pefl import encode_prompts

    pipe = load_base("inpaint", device="cpu", dtype="fp32")
    prompts = ["a large red circle at the top left on a white background", "a small blue square at the center"]
    states = encode_prompts(pipe, prompts)
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=None)
    assert torch.equal(states, torch.cat([uncond, cond]))


def test_train_feedback_takes_the_rewards_and_their_weights_and_defaults_to_the_measured_kl():
    from editloop.cli.train import RECIPE_KL_WEIGHT
    from trainers.feedback.loop import parse_reward_weights

    assert parse_reward_weights("aesthetic=1, alignment=0.5") == {"aesthetic": 1.0, "alignment": 0.5}
    with pytest.raises(ValueError, match="names unknown reward 'sharpness'; rewards: \\['aesthetic', 'alignment'\\]"):
        parse_reward_weights("aesthetic=1,sharpness=2")
    with pytest.raises(ValueError, match="adversarial stage's critic"):
        parse_reward_weights("coherence=1")
    with pytest.raises(ValueError, match="must be KIND=WEIGHT"):
        parse_reward_weights("aesthetic")
    with pytest.raises(ValueError, match="`reward_weights\\['alignment'\\]` must be a finite number >= 0, got -1.0"):
        parse_reward_weights("alignment=-1")
    with pytest.raises(ValueError, match="needs one weight > 0"):
        parse_reward_weights("aesthetic=0")
    with pytest.raises(ValueError, match="names unknown reward"):
        FeedbackConfig(reward_weights={"aesthetic": 1.0, "beauty": 1.0})
    assert RECIPE_KL_WEIGHT == 100.0 and FeedbackConfig().kl_weight == 0.0  # the CLI applies the recipe


def test_the_base_floor_refuses_an_editor_the_world_judges_worse_than_the_base():
    from trainers.feedback.run import base_floor_guard

    assert base_floor_guard({"success": 0.5}, None, 0.02) == []  # the base is served: its reference is the base
    assert base_floor_guard({"success": 0.49}, {"success": 0.5}, 0.02) == []  # within the tolerance
    assert base_floor_guard({"success": 0.4}, {"success": 0.5}, 0.02) == [
        "judged success 0.400 fell more than 0.02 below the base model's 0.500 (every editor must stay "
        "non-inferior to the base)"]
