"""Online GRPO for the inpainting editor: group-relative advantages, the clipped objective, the sampler's likelihood,
scoring through real reward services over gRPC (batched, pinned, retried, dropped past a deadline, failing with the
address when down), the gate's reward-hacking guard, the loop's policy, and `editloop train grpo` on a real worker,
SIGKILLed and resumed into one version."""

import asyncio
import copy
import subprocess
import sys
import threading
import uuid

import grpc
import numpy as np
import pytest
import torch
from conftest import free_port, promote_rewards, purge, run_killed_once, worker_state
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun, make_engine, make_sessionmaker, upgrade
from editloop.models.reward import save_reward, tiny_reward
from editloop.models.zoo import load_pipeline
from editloop.settings import Settings
from trainers.feedback.examples import feedback_examples
from trainers.feedback.grpo import (
    GrpoConfig,
    clipped_objective,
    group_advantages,
    hacking_guard,
    policy_loss,
    rollout,
    weighted_advantages,
)
from trainers.feedback.pefl import prepare
from trainers.feedback.progressive import stage_config
from trainers.feedback.reward_client import ClientPolicy, LocalScorer, RewardServiceError, ScoreBatch, ServiceScorer
from trainers.feedback.rewards import load_rewards
from trainers.feedback.run import run_feedback_stage

KINDS = ("aesthetic", "alignment", "coherence")


@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    for kind in KINDS:
        save_reward(tiny_reward(kind, seed=1), kind, root / kind, version=f"{kind}-test")
    return root


class ServedRewards:
    """One real reward service per kind (port 0), served from a background event loop while the test runs."""

    def __init__(self, settings: Settings, dirs: dict) -> None:
        from services.app import start_service

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = {kind: asyncio.run_coroutine_threadsafe(
            start_service("reward", settings, path, reward_kind=kind, max_delay=0.005), self.loop).result(120)
            for kind, path in dirs.items()}
        self.addresses = {kind: f"127.0.0.1:{r.port}" for kind, r in self.running.items()}

    def close(self) -> None:
        for running in self.running.values():
            asyncio.run_coroutine_threadsafe(running.stop(0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


@pytest.fixture
def served(reward_dirs, tmp_path):
    services = ServedRewards(Settings(state_dir=tmp_path / "services"), {k: reward_dirs / k for k in KINDS})
    yield services
    services.close()


def edit_batch(n: int, seed: int = 3) -> ScoreBatch:
    examples = feedback_examples(n, seed)
    rng = np.random.default_rng(seed)
    images = np.stack([np.clip(e.source.astype(int) + rng.integers(-40, 40, e.source.shape), 0, 255).astype(np.uint8)
                       for e in examples])
    return ScoreBatch(images, [e.prompt for e in examples], np.stack([e.source for e in examples]),
                      np.stack([e.mask for e in examples]))


def test_advantages_are_relative_to_each_group_and_skip_dropped_samples():
    rewards = np.array([1.0, 2.0, 3.0, np.nan, 5.0, np.nan, np.nan, np.nan])
    adv = group_advantages(rewards, group=4)
    first = np.array([1.0, 2.0, 3.0])
    assert np.allclose(adv[:3], (first - first.mean()) / (first.std() + 1e-4)) and adv[3] == 0
    assert np.all(adv[4:] == 0)  # one scored sample in its group: nothing to compare it with
    assert np.all(group_advantages(np.array([7.0, 7.0]), 2) == 0)  # a tie teaches nothing
    scores = {"aesthetic": np.array([-30.0, 10.0, 40.0, np.nan]), "coherence": np.array([0.5, 0.6, 0.4, 0.9]),
              "alignment": np.array([9.0, 9.0, 9.0, 9.0])}
    both = weighted_advantages(scores, {"aesthetic": 1.0, "coherence": 0.5, "alignment": 0.0}, group=4)
    scored = np.array([0, 1, 2])  # the fourth sample lost its aesthetic score: no advantage, and not in the group's
    expected = group_advantages(scores["aesthetic"][scored], 3) + 0.5 * group_advantages(scores["coherence"][scored], 3)
    assert np.allclose(both[:3], expected) and both[3] == 0  # each reward standardised in the group, then weighted


def test_the_clipped_objective_stops_pushing_once_the_ratio_leaves_the_clip_range():
    old = torch.zeros(2)
    for shift, pushed in ((0.0, True), (0.01, False)):  # ratio 1 (on-policy), then e^0.01 > 1 + clip
        new = torch.full((2,), shift, requires_grad=True)
        loss, clipped = clipped_objective(new, old, torch.tensor([1.0, 1.0]), clip=1e-3)
        loss.backward()
        assert bool(new.grad.abs().sum() > 0) == pushed and float(clipped) == (0.0 if pushed else 1.0)
    new = torch.full((2,), 0.01, requires_grad=True)  # a negative advantage is still pushed down past the range
    clipped_objective(new, old, torch.tensor([-1.0, -1.0]), clip=1e-3)[0].backward()
    assert bool((new.grad > 0).all())


def test_the_samplers_likelihood_is_what_the_loss_recomputes(tiny_models):
    pipe = load_pipeline(tiny_models / "inpaint", "inpaint", device="cpu", dtype="fp32")
    examples = [e for e in feedback_examples(2, 5) for _ in range(2)]
    cfg = stage_config("grpo", batch_size=4, grpo={"group": 2})
    roll = rollout(pipe, prepare(pipe, examples), cfg.schedule.steps, cfg.guidance, 1.0,
                   torch.Generator().manual_seed(0))
    assert roll.images.shape == (4, 64, 64, 3) and roll.log_probs.shape == (20, 4)
    assert torch.isfinite(roll.log_probs).all()
    anchor = copy.deepcopy(pipe.unet)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for index in (0, 10, 19):
        loss, got = policy_loss(pipe, anchor, roll, index, advantages, cfg)
        assert got["clipped"] == 0 and got["kl"] == pytest.approx(0, abs=1e-6)  # on-policy: ratio 1, no drift
        assert float(loss) == pytest.approx(-float(advantages.mean()), abs=1e-4)


def test_the_services_score_as_in_process_pinned_to_the_promoted_versions(served, reward_dirs, tmp_path):
    rewards = load_rewards({k: reward_dirs / k for k in KINDS}, {k: f"{k}-test" for k in KINDS})
    batch = edit_batch(5)
    local = LocalScorer(rewards)
    remote = ServiceScorer(served.addresses, rewards.versions, Settings(state_dir=tmp_path),
                           ClientPolicy(batch=2))  # three requests per kind: batched by the client too
    try:
        for kind in KINDS:
            assert np.allclose(remote.score(kind, batch), local.score(kind, batch), atol=1e-4), kind
        assert remote.requests == 3 + 3 * 3 and remote.dropped == 0  # ModelInfo per kind, then the chunks
        assert remote.describe()["versions"] == {k: f"{k}-test" for k in KINDS}
    finally:
        remote.close()
    with pytest.raises(RewardServiceError, match=rf"reward service aesthetic at {served.addresses['aesthetic']} "
                                                 r"serves version 'aesthetic-test'; the run pins 'aesthetic-v2'"):
        ServiceScorer({"aesthetic": served.addresses["aesthetic"]}, {"aesthetic": "aesthetic-v2"},
                      Settings(state_dir=tmp_path))
    from editloop.world.io import to_png
    from services.gen.editloop.v1 import common_pb2, reward_pb2, reward_pb2_grpc

    with grpc.insecure_channel(served.addresses["alignment"]) as channel:  # a promotion mid-run: the pin refuses it
        with pytest.raises(grpc.RpcError) as err:
            reward_pb2_grpc.RewardStub(channel).Score(reward_pb2.ScoreRequest(
                items=[reward_pb2.ScoreItem(image=common_pb2.Image(png=to_png(batch.images[0])), prompt="a")],
                model=common_pb2.ModelRef(version="alignment-v2")), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pins alignment version 'alignment-v2'; this server scores with 'alignment-test'" in err.value.details()


def test_a_service_past_its_deadline_drops_samples_and_a_down_one_fails_with_its_address(served, tmp_path):
    settings = Settings(state_dir=tmp_path)
    slow = ServiceScorer({"aesthetic": served.addresses["aesthetic"]}, {"aesthetic": "aesthetic-test"}, settings,
                         ClientPolicy(timeout=30, retries=1, backoff=0, batch=2))
    slow.policy = ClientPolicy(timeout=1e-4, retries=1, backoff=0, batch=2)  # after ModelInfo: every Score too late
    try:
        got = slow.score("aesthetic", edit_batch(3))
    finally:
        slow.close()
    assert np.isnan(got).all() and slow.dropped == 3 and slow.retried == 2  # two chunks, one retry each
    down = f"127.0.0.1:{free_port()}"
    waits = []
    with pytest.raises(RewardServiceError, match=rf"reward service coherence at {down}: ModelInfo failed with "
                                                 r"UNAVAILABLE: .* \(after 3 tries\)"):
        ServiceScorer({"coherence": down}, {"coherence": "coherence-test"}, settings,
                      ClientPolicy(timeout=5, retries=2, backoff=0.25), sleep=waits.append)
    assert waits == [0.25, 0.5]  # exponential back-off between the tries


def test_the_gate_refuses_a_candidate_whose_held_out_rewards_fell():
    grpo = GrpoConfig(guard=("alignment",), guard_drop=0.05)
    served = {"reward_alignment": 0.60, "coherence": 0.50, "reward_aesthetic": 0.5}
    assert hacking_guard({"reward_alignment": 0.58, "coherence": 0.47, "reward_aesthetic": 0.9}, served, grpo) == []
    why = hacking_guard({"reward_alignment": 0.50, "coherence": 0.40, "reward_aesthetic": 0.9}, served, grpo)
    assert why == ["held-out alignment score 0.5000 fell more than 0.05 below the served model's 0.6000 (reward "
                   "hacking guard)", "held-out coherence score 0.4000 fell more than 0.05 below the served model's "
                   "0.5000 (reward hacking guard)"]


def test_bad_grpo_configs_are_named(tmp_path):
    for config, text in (({"batch_size": 6}, r"`batch_size` \(6\) must be a multiple of `grpo.group` \(4\)"),
                         ({"reward_weights": {"aesthetic": 1, "alignment": 1}},
                          "`grpo.guard` reward 'alignment' is also trained on"),
                         ({"grpo": {"guard": ["coherence"]}}, "`grpo.guard` names unknown reward 'coherence'"),
                         ({"grpo": {"addresses": {"aesthetic": "nowhere"}}},
                          r"`grpo.addresses\['aesthetic'\]` must be host:port, got 'nowhere'"),
                         ({"grpo": {"eta": 0}}, r"`grpo.eta` must be in \(0.0, 1.0\], got 0"),
                         ({"grpo": {"speed": 2}}, "unknown grpo config field 'speed'")):
        with pytest.raises(ValueError, match=text):
            stage_config("grpo", **config)
    env, *_ = worker_state(tmp_path)
    for flags, text in ((["--group", "1"], "`grpo.group` must be in 2..64"),
                        (["--rewards", "beauty=1"], "unknown reward 'beauty'"),
                        (["--scorer", "services"], "no reward service address is known"),
                        (["--reward-address", "aesthetic"], "entry 'aesthetic' must be KIND=HOST:PORT")):
        done = subprocess.run([sys.executable, "-m", "editloop.cli.main", "train", "grpo", *flags], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and text in done.stderr, (flags, done.stderr[-800:])


def test_the_loop_starts_a_grpo_round_with_the_unweighted_rewards_as_guards(tmp_path):
    from trainers.autoloop import check_loop, policy
    from trainers.celery_app import make_celery
    from trainers.chains import add_feedback_rows, send_feedback_chain

    settings = Settings(state_dir=tmp_path / "state", broker_url="", result_backend="", loop_stages="grpo",
                        loop_rewards="aesthetic=1", loop_floor_alpha=1)
    assert policy(settings).config["grpo"] == {"guard": ["alignment"]}
    url = settings.resolved_database_url()
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    from editloop.registry import promote, register_candidate

    with sessions.begin() as s:
        register_candidate(s, "aesthetic", "aesthetic", "a1", "key-a1", {"eval_score": 0.9}, {}, None)
        promote(s, "aesthetic", "a1", force=True)
    app = make_celery(settings)
    check_loop(sessions, settings, add_feedback_rows, lambda stages, ids, config: send_feedback_chain(
        app, stages, ids, config), "test")
    with sessions() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
    assert run.kind == "feedback-grpo" and run.inputs["trigger"] == "loop (test): aesthetic reward a1 promoted"
    cfg = stage_config("grpo", **{k: v for k, v in run.inputs["config"].items() if k != "eval"})
    assert cfg.grpo.guard == ("alignment",) and cfg.reward_weights == {"aesthetic": 1.0}  # what the worker will run
    assert cfg.kl_weight == 0 and cfg.grpo.kl_weight == 0.04  # PeFL's trust region is not GRPO's KL term


def test_editloop_train_grpo_scores_through_the_services_and_resumes_after_a_kill(tmp_path, reward_dirs, served):
    """`editloop train grpo` on RabbitMQ, scored by real reward services; the worker is SIGKILLed at the run's first
    checkpoint; the next worker resumes it, scoring through the same pinned versions, into one version."""
    from trainers.celery_app import make_celery

    env, settings, sessions, store = worker_state(tmp_path, rabbitmq=True)
    promote_rewards(sessions, store, reward_dirs)
    purge(make_celery(settings))
    addresses = [f"--reward-address={k}={a}" for k, a in served.addresses.items()]
    code, stdout, stderr, killed_at, checkpoint = run_killed_once(env, settings, "gpu", "grpo", [
        "train", "grpo", "--steps", "4", "--checkpoint-every", "2", "--batch-size", "2", "--group", "2",
        "--train-fraction", "0.2", "--scorer", "services", *addresses, "--eval-examples", "3", "--wait"])
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    assert killed_at < 4
    with sessions() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
        assert run.kind == "feedback-grpo" and run.status == "succeeded", run.error
        metrics = run.outputs["metrics"]
        assert metrics["steps_done"] == 4 and "coherence" in metrics and "l1_outside" in metrics
    history = scored_through(sessions, run, "editor", served, checkpoint)
    assert all(0 < h["reward_aesthetic"] < 1 and 0 < h["guard_alignment"] < 1 for h in history)
    assert f"queued grpo run {run.id}" in stdout


def scored_through(sessions, run, kind: str, served: ServedRewards, checkpoint) -> list[dict]:
    """The run's one `kind` version (grpo-<run>) was scored through the served rewards, pinned to the test's
    versions, nothing dropped; its 4 steps' history."""
    with sessions() as s:
        (version,) = s.scalars(select(ModelVersion).where(ModelVersion.kind == kind)).all()
        assert version.version == f"grpo-{run.id[:12]}"
        scorer = version.config["lineage"]["scorer"]
    assert scorer["via"] == "services" and scorer["addresses"] == served.addresses
    assert scorer["versions"] == {k: f"{k}-test" for k in KINDS} and scorer["dropped"] == 0
    history = torch.load(checkpoint.parent / "checkpoint.pt", weights_only=False)["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    return history


def test_a_run_whose_reward_service_is_down_fails_with_its_address_before_sampling(tmp_path, reward_dirs):
    _, settings, sessions, store = worker_state(tmp_path)
    promote_rewards(sessions, store, reward_dirs)
    down = {kind: f"127.0.0.1:{free_port()}" for kind in KINDS}
    run_id = uuid.uuid4().hex
    with pytest.raises(RewardServiceError, match=rf"reward service aesthetic at {down['aesthetic']}: ModelInfo "
                                                 r"failed with UNAVAILABLE"):
        run_feedback_stage("grpo", run_id, sessions, store, settings,
                           {"steps": 2, "batch_size": 4, "grpo": {"group": 2, "scorer": "services", "addresses": down,
                                                                  "retries": 1}, "eval": {"examples": 3}})
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
    assert run.status == "failed" and f"at {down['aesthetic']}" in run.error
    assert not (settings.state_dir / "runs" / run_id).exists()  # nothing sampled, nothing trained
