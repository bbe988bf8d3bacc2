"""Reward kinds are looked up in registries: a fourth kind, defined in one file (tests/toy_reward_kind.py) and
added with one line (`add_module`, what a line in trainers/reward/kinds.KIND_MODULES does), trains through the same
run lifecycle into the model registry, passes the same gate, loads through the registry's load check, is offered
by the CLI, served by a reward service over gRPC and evaluated by `editloop eval reward`."""

import json
import uuid

import numpy as np
import pytest

from editloop.models.reward_kinds import RewardKind, kind_names, preference_names, register, reward_kind

TOY = "toy_reward_kind"


@pytest.fixture
def toy_kind():
    from trainers.reward.kinds import add_module, remove_module

    add_module(TOY)  # the one registry line
    yield "sharpness"
    remove_module(TOY, ("sharpness",))


def test_the_built_in_kinds_and_clear_refusals():
    assert kind_names()[:3] == ("aesthetic", "alignment", "coherence")
    assert preference_names()[:2] == ("aesthetic", "alignment") and not reward_kind("coherence").text_conditioned
    with pytest.raises(ValueError, match=r"`kind` must be one of \['aesthetic', 'alignment', 'coherence'.*got 'x'"):
        reward_kind("x")
    with pytest.raises(ValueError, match="`family` of reward kind 'odd' must be one of"):
        RewardKind("odd", "ranking")
    with pytest.raises(ValueError, match="'aesthetic' is already registered"):
        register(RewardKind("aesthetic", "coherence"))
    from trainers.reward.kinds import kind_trainer

    with pytest.raises(ValueError, match="`kind` must be one of"):
        kind_trainer("sharpness")  # not registered outside the test that adds it


def test_a_kind_whose_data_names_no_choosing_set_is_refused_by_name(toy_kind, monkeypatch):
    from trainers.reward.kinds import _TRAINERS, KindTrainer
    from trainers.reward.run import RewardTrainConfig, _data

    full = _data(toy_kind, None, None, None, RewardTrainConfig())
    assert {"train", "select", "eval", "lineage"} <= set(full) and len(full["select"]) == 16
    no_select = {k: v for k, v in full.items() if k != "select"}
    monkeypatch.setitem(_TRAINERS, toy_kind, KindTrainer(**{**vars(_TRAINERS[toy_kind]), "data": lambda *a: no_select}))
    with pytest.raises(ValueError, match=r"the sharpness reward's data\(\) returned no 'select'"):
        _data(toy_kind, None, None, None, RewardTrainConfig())


def test_a_run_with_epochs_is_sized_to_its_training_examples():
    from trainers.reward.run import RewardTrainConfig

    fixed = RewardTrainConfig()
    assert fixed.sized_to(10) is fixed  # no epochs: always `steps`
    cfg = RewardTrainConfig(epochs=3.0)  # batch 64, steps 1500, at least 200
    assert (cfg.sized_to(180).steps, cfg.sized_to(180).eval_every) == (200, 25)  # 50 labels: the minimum
    assert (cfg.sized_to(6400).steps, cfg.sized_to(6400).eval_every) == (300, 37)  # 3 passes of 100 steps
    assert (cfg.sized_to(10**6).steps, cfg.sized_to(10**6).eval_every) == (1500, 100)  # capped at `steps`
    assert RewardTrainConfig(epochs=3.0, steps=10).sized_to(180).steps == 10  # a short run stays short
    assert RewardTrainConfig(epochs=float("inf")).sized_to(180).steps == 1500  # a setting of inf: `steps`


def test_every_feedback_method_is_a_registered_stage():
    from trainers.feedback.loop import METHODS
    from trainers.feedback.progressive import STAGE_PRESETS, stage_config

    assert set(STAGE_PRESETS) == set(METHODS)
    assert stage_config("progressive").schedule.steps == 8 and stage_config("grpo").grpo is not None
    with pytest.raises(ValueError, match="`stage` must be one of"):
        stage_config("distill")


def test_a_fourth_kind_in_one_file_trains_registers_serves_and_evaluates(toy_kind, tmp_path, postgres_url,
                                                                         monkeypatch, capsys):
    import asyncio

    import grpc
    from conftest import worker_state
    from sqlalchemy import select

    from editloop.cli.main import build_parser, main
    from editloop.db import ModelVersion
    from editloop.registry import fetch_model_dir, load_check
    from editloop.world import render, sample_scene
    from editloop.world.io import to_png
    from services.app import start_service
    from services.gen.editloop.v1 import common_pb2, reward_pb2, reward_pb2_grpc
    from trainers.reward.run import RewardTrainConfig, train_reward

    monkeypatch.setenv("EDITLOOP_DATABASE_URL", postgres_url)
    env, settings, sessions, store = worker_state(tmp_path)
    settings = settings.model_copy(update={"database_url": postgres_url})
    from editloop.state import open_sessions

    sessions = open_sessions(settings)
    assert toy_kind in kind_names() and toy_kind in preference_names()
    args = build_parser().parse_args(["train", "reward", "--kind", toy_kind])  # the CLI offers it
    assert args.kind == toy_kind

    cfg = RewardTrainConfig(steps=40, eval_every=20, batch_size=16, warmup=5, lr=1e-3)
    out = train_reward(toy_kind, uuid.uuid4().hex, sessions, store, settings, cfg)
    assert out["version"].startswith(f"{toy_kind}-") and out["promoted"] is True, out.get("refused")
    assert out["metrics"]["floor"]["unit"] == "held-out pairs" and out["metrics"]["floor"]["p_value"] < 0.05
    assert out["metrics"]["sharp_accuracy"] > 0.8  # it learned the kind's task, judged on held-out renders
    with sessions() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == out["version"])).one()
        assert (row.kind, row.status) == (toy_kind, "promoted")
        load_check(toy_kind, store, settings.state_dir / "models")(row)  # the registry's load check
        path = fetch_model_dir(store, row.checkpoint_key, settings.state_dir / "models")

    async def score() -> list[float]:
        running = await start_service("reward", settings, model=path, reward_kind=toy_kind, record=False)
        try:
            rng = np.random.default_rng(3)
            scene = sample_scene(rng)
            image = render(scene)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = reward_pb2_grpc.RewardStub(ch)
                info = await stub.ModelInfo(reward_pb2.ModelInfoRequest())
                assert info.kind == toy_kind
                resp = await stub.Score(reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(
                    image=common_pb2.Image(png=to_png(image)), prompt=scene.caption)]))
            return list(resp.scores)
        finally:
            await running.stop(0)

    assert len(asyncio.run(score())) == 1  # served over gRPC like the built-in kinds

    monkeypatch.setenv("EDITLOOP_STATE_DIR", str(settings.state_dir))
    capsys.readouterr()
    assert main(["eval", "reward", toy_kind, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["model_kind"] == toy_kind and rec["suite"] == "world-sharpness-900000"
    assert rec["metrics"]["accuracy"] > 0.8
