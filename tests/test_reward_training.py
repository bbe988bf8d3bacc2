"""Reward models: training runs from labels, the registry's gate, rollback, hot reload in the service."""

import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import purge, start_worker, worker_state
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun, make_engine, make_sessionmaker, upgrade
from editloop.labels.simulated import LabelPlan, render_candidate_sets, simulate_labels
from editloop.models.reward import save_reward, tiny_reward
from editloop.registry import PromotionRefused, promote, promoted, register_candidate, rollback, store_model_dir
from editloop.settings import Settings
from editloop.store.local import LocalBlobStore
from editloop.world.annotators import SimulatedAnnotator
from trainers.reward.data import NotEnoughLabels
from trainers.reward.run import RewardTrainConfig, train_reward

TINY = RewardTrainConfig(steps=30, batch_size=16, eval_every=15, patience=3, min_labels=20)


@pytest.fixture
def world(tmp_path, db_url):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    settings = Settings(state_dir=tmp_path / "state", database_url=db_url)
    return settings, sessions, LocalBlobStore(settings.resolved_blob_dir())


def labelled(world, n_sets=60, seed=0):
    settings, sessions, store = world
    ids = render_candidate_sets(sessions, store, n_sets, 4, seed=seed)
    simulate_labels(sessions, store, ids, LabelPlan([SimulatedAnnotator("sharp", 0.25, seed=seed)]))
    return ids


def add_version(sessions, store, kind, version, eval_score=None, parent_score=None, seed=0):
    with tempfile.TemporaryDirectory() as tmp:
        save_reward(tiny_reward(kind, seed), kind, Path(tmp), version=version)
        key = store_model_dir(store, Path(tmp))
    with sessions.begin() as s:
        register_candidate(s, kind, kind, version, key, {"eval_score": eval_score, "parent_eval_score": parent_score},
                           {}, None)


def test_a_run_trains_registers_and_promotes_then_a_second_run_is_gated_against_it(world, caplog):
    settings, sessions, store = world
    labelled(world)
    caplog.set_level("INFO", logger="editloop.runs")
    caplog.set_level("INFO", logger="trainers.reward.run")
    first = train_reward("aesthetic", uuid.uuid4().hex, sessions, store, settings, TINY)
    said = caplog.text  # the worker's log says what the run did: its data, its evaluations, its outcome
    assert "checkpoint-choosing and" in said and "held-out examples, starting from scratch, 30 steps" in said
    assert "step 15/30" in said and "eval " in said and "step 30/30" in said
    assert f"registered {first['version']}" in said and "promoted" in said
    assert 0.0 <= first["metrics"]["pairwise_accuracy"] <= 1.0
    assert 0.0 <= first["metrics"]["calibration_error"] <= 0.5
    assert first["metrics"]["parent_eval_score"] is None
    with sessions() as s:  # its checkpoint was chosen on held-out sets of their own, not on those it is scored on
        lineage = s.scalars(select(ModelVersion).where(ModelVersion.version == first["version"])).one().config[
            "lineage"]
    assert lineage["selected_on"] == "held-out sets" and lineage["select_pairs"] > 0 and lineage["eval_pairs"] > 0
    floor = first["metrics"]["floor"]  # how surely it beats chance, counted over held-out candidate sets
    assert floor["unit"] == "held-out candidate sets" and 1 <= floor["units"] < 60 and 0 < floor["p_value"] <= 1
    # a first version has no parent: the floor decides (30 steps on 60 labels rarely beat chance surely)
    assert first["promoted"] == (floor["p_value"] < settings.promotion_floor_alpha)
    if not first["promoted"]:
        assert "does not surely beat chance" in first["refused"] and f"of {floor['units']} held-out" in first["refused"]
        with sessions.begin() as s:  # a person may still decide otherwise
            promote(s, "aesthetic", first["version"], force=True)
    run_id = uuid.uuid4().hex
    second = train_reward("aesthetic", run_id, sessions, store, settings, TINY)
    # the second run was compared with the first on its own held-out set, and is promoted only if not worse
    assert second["metrics"]["parent_eval_score"] is not None
    expect = (second["metrics"]["eval_score"] >= second["metrics"]["parent_eval_score"] - TINY.tolerance
              and second["metrics"]["floor"]["p_value"] < settings.promotion_floor_alpha)  # every version's floor
    assert second["promoted"] == expect
    with sessions() as s:
        rows = s.scalars(select(ModelVersion).where(ModelVersion.kind == "aesthetic")).all()
        assert len(rows) == 2 and sum(r.status == "promoted" for r in rows) == 1
        assert rows[1].config["lineage"]["labels"] == 60 and rows[1].parent_id == rows[0].id
        assert s.get(TrainingRun, run_id).status == "succeeded"
    assert train_reward("aesthetic", run_id, sessions, store, settings, TINY)["version"] == second["version"]
    with sessions() as s:  # a re-run of a finished run registers nothing new
        assert len(s.scalars(select(ModelVersion).where(ModelVersion.kind == "aesthetic")).all()) == 2


def test_too_few_labels_fail_the_run_with_the_reason(world):
    settings, sessions, store = world
    labelled(world, n_sets=5)
    run_id = uuid.uuid4().hex
    with pytest.raises(NotEnoughLabels, match="5 usable best/worst labels; at least 20"):
        train_reward("aesthetic", run_id, sessions, store, settings, TINY)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == "failed" and "NotEnoughLabels" in run.error


def test_the_gate_refuses_worse_versions_and_wrong_kinds_and_rollback_goes_back(world):
    _, sessions, store = world
    add_version(sessions, store, "aesthetic", "v1", 0.70)
    add_version(sessions, store, "aesthetic", "v2", 0.75, 0.70)
    add_version(sessions, store, "aesthetic", "v3", 0.60, 0.75)
    add_version(sessions, store, "coherence", "c1", 0.9)
    with sessions.begin() as s:
        promote(s, "aesthetic", "v1")
        promote(s, "aesthetic", "v2")
        with pytest.raises(PromotionRefused, match="0.6000 is below the promoted version's 0.7500"):
            promote(s, "aesthetic", "v3")
        with pytest.raises(PromotionRefused, match="is a coherence model, not aesthetic"):
            promote(s, "aesthetic", "c1")

        def broken(row):
            raise OSError("truncated safetensors")

        with pytest.raises(PromotionRefused, match="does not load"):
            promote(s, "aesthetic", "v3", check=broken, force=True)
        assert promoted(s, "aesthetic").version == "v2"
        assert rollback(s, "aesthetic").version == "v1"
        with pytest.raises(PromotionRefused, match="nothing to roll back to"):
            rollback(s, "aesthetic")


def test_the_floor_refuses_a_version_that_does_not_surely_beat_chance(world):
    _, sessions, store = world
    with tempfile.TemporaryDirectory() as tmp:
        save_reward(tiny_reward("aesthetic", 0), "aesthetic", Path(tmp), version="x")
        key = store_model_dir(store, Path(tmp))
    unsure = {"units": 4, "unit": "held-out candidate sets", "wins": 4, "p_value": 0.0625}
    sure = {"units": 9, "unit": "held-out candidate sets", "wins": 8, "p_value": 0.0195}
    with sessions.begin() as s:
        for version, floor in (("unsure", unsure), ("sure", sure)):
            register_candidate(s, "aesthetic", "aesthetic", version, key, {"eval_score": 1.0, "floor": floor}, {},
                               None)
        with pytest.raises(PromotionRefused, match=r"4 of 4 held-out candidate sets right, one-sided sign test "
                                                   r"p = 0.0625 \(needs < 0.05"):
            promote(s, "aesthetic", "unsure")
        with pytest.raises(ValueError, match=r"`EDITLOOP_PROMOTION_FLOOR_ALPHA` must be in \(0, 1\].*got 0"):
            promote(s, "aesthetic", "unsure", floor_alpha=0)
        assert promote(s, "aesthetic", "sure").status == "promoted"
        assert promote(s, "aesthetic", "unsure", floor_alpha=1).status == "promoted"  # 1: the floor is off


def test_the_service_hot_reloads_two_promotions_without_a_failed_request(world):
    from editloop.world import render, sample_scene
    from editloop.world.io import to_png
    from services.app import start_service
    from services.gen.editloop.v1 import common_pb2, reward_pb2, reward_pb2_grpc

    settings, sessions, store = world
    settings = settings.model_copy(update={"reload_interval_s": 0.1})
    for i, version in enumerate(("r1", "r2", "r3")):
        add_version(sessions, store, "alignment", version, 0.5 + i / 10, seed=i)
    with sessions.begin() as s:
        promote(s, "alignment", "r1")
    scene = sample_scene(np.random.default_rng(0))
    item = reward_pb2.ScoreItem(image=common_pb2.Image(png=to_png(render(scene))), prompt=scene.caption)

    async def go():
        running = await start_service("reward", settings, None, reward_kind="alignment", max_delay=0.005)
        seen, errors = [], []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = reward_pb2_grpc.RewardStub(ch)

                async def client():
                    for _ in range(400):
                        try:
                            resp = await stub.Score(reward_pb2.ScoreRequest(items=[item, item]))
                            seen.append((resp.model.version, resp.scores[0]))
                        except grpc.RpcError as exc:
                            errors.append(exc)
                        await asyncio.sleep(0.005)

                async def promoter():
                    for version in ("r2", "r3"):
                        await asyncio.sleep(0.6)
                        with sessions.begin() as s:
                            promote(s, "alignment", version)

                await asyncio.gather(client(), client(), promoter())
        finally:
            await running.stop(0)
        return seen, errors

    seen, errors = asyncio.run(go())
    assert not errors
    order = [v for i, (v, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != v]
    assert set(order) == {"r1", "r2", "r3"} and order[0] == "r1" and order[-1] == "r3"
    by_version = {}
    for version, score in seen:  # each version scores the same input the same way: no mixed batches
        by_version.setdefault(version, set()).add(round(score, 4))
    assert all(len(scores) == 1 for scores in by_version.values())


def test_train_reward_by_hand_runs_on_a_real_worker(tmp_path):
    env, settings, sessions, store = worker_state(tmp_path)
    labelled((settings, sessions, store), n_sets=40, seed=3)
    env = {**env, "EDITLOOP_PROMOTION_FLOOR_ALPHA": "1"}  # 20 steps cannot beat chance surely; the floor's own test
    worker = start_worker("gpu", "rw", env)
    try:
        done = subprocess.run([sys.executable, "-m", "editloop.cli.main", "train", "reward", "--kind", "aesthetic",
                               "--steps", "20", "--wait"], env=env, capture_output=True, text=True, timeout=600)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"promoted": true' in done.stdout
    with sessions() as s:
        run = s.scalars(select(TrainingRun)).one()
        assert run.inputs["trigger"] == "by hand: editloop train reward" and run.status == "succeeded"
        assert promoted(s, "aesthetic").version == run.outputs["version"]


def test_a_worker_killed_mid_run_is_replaced_and_the_run_resumes_into_one_version(tmp_path):
    """RabbitMQ redelivers the unacknowledged task (acks_late) to the next worker, which resumes from the
    run's last checkpoint; the candidate's version comes from the run id, so nothing is registered twice."""
    import signal

    from celery.result import AsyncResult

    from editloop.cli.train import enqueue_reward_run
    from trainers.celery_app import make_celery

    env, settings, sessions, store = worker_state(tmp_path, rabbitmq=True)
    labelled((settings, sessions, store), n_sets=40, seed=4)
    app = make_celery(settings)
    purge(app)

    first = start_worker("gpu", "kill", env)
    run_id = enqueue_reward_run(settings, "aesthetic", {"steps": 160, "batch_size": 16, "eval_every": 20,
                                                        "patience": 100}, "test")
    checkpoint = settings.state_dir / "runs" / run_id / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not checkpoint.is_file():
        time.sleep(0.2)
    assert checkpoint.is_file(), "the first worker never checkpointed"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = start_worker("gpu", "kill", env)
    try:
        result = AsyncResult(run_id, app=app).get(timeout=600)
    finally:
        second.terminate()
        second.wait(timeout=30)
    with sessions() as s:
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "aesthetic")).all()
        assert [v.version for v in versions] == [result["version"]]
        assert s.get(TrainingRun, run_id).status == "succeeded"
    assert result["metrics"]["steps_done"] == 160


@pytest.fixture
def clip_dir(tmp_path):
    """A tiny CLIP (transformers CLIPModel, random weights) saved in transformers format, with a tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    from editloop.models.tokenizer import build_tokenizer

    text = dict(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=40, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(tmp_path / "clip")
    build_tokenizer().save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


def test_a_clip_backbone_loads_by_path_into_the_reward_class_and_trains(world, clip_dir, tmp_path):
    import torch
    from transformers import CLIPModel

    from editloop.models.reward import PreferenceReward, load_reward

    model = PreferenceReward.from_clip(clip_dir).eval()
    clip = CLIPModel.from_pretrained(clip_dir)
    assert torch.equal(model.vision.embeddings.patch_embedding.weight,
                       clip.vision_model.embeddings.patch_embedding.weight)
    assert torch.equal(model.text_encoder.final_layer_norm.weight, clip.text_model.final_layer_norm.weight)
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    ids = torch.randint(4, 100, (3, 12))
    scores = model(images, ids)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    save_reward(model, "aesthetic", tmp_path / "r", version="clip-test")
    _, loaded, _ = load_reward(tmp_path / "r", "aesthetic")
    assert torch.allclose(loaded(images, ids), scores, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="`backbone` .* is not a transformers model directory"):
        PreferenceReward.from_clip(tmp_path)
    settings, sessions, store = world
    labelled(world, n_sets=30)
    cfg = RewardTrainConfig(steps=4, batch_size=8, eval_every=2, patience=3, min_labels=20, backbone=str(clip_dir))
    out = train_reward("aesthetic", uuid.uuid4().hex, sessions, store, settings, cfg)
    with sessions() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == out["version"])).one()
    from editloop.registry import fetch_model_dir

    _, trained, _ = load_reward(fetch_model_dir(store, row.checkpoint_key, tmp_path / "cache"), "aesthetic")
    assert trained.config.vision_config["image_size"] == 32  # the CLIP backbone, saved and loaded by path


def test_alignment_also_learns_from_edit_instructions_with_their_source(world):
    from trainers.reward.alignment import instruction_examples, mixed_examples

    edits = instruction_examples(10, 3)
    assert all(e.source is not None and e.caption != e.negative and e.attribute.startswith("edit:") for e in edits)
    assert {e.attribute for e in edits} == {f"edit:{a}" for a in ("color", "shape", "size", "position", "background")}
    mixed = mixed_examples(20, 3, 0.25)
    assert sum(e.source is not None for e in mixed) == 5 and len(mixed) == 20
    settings, sessions, store = world
    cfg = RewardTrainConfig(steps=2, batch_size=8, eval_every=1, alignment_train=40, alignment_eval=40,
                            alignment_instructions=0.5)
    out = train_reward("alignment", uuid.uuid4().hex, sessions, store, settings, cfg)
    metrics = out["metrics"]
    assert 0 <= metrics["accuracy_edit:color"] <= 1 and 0 <= metrics["accuracy_color"] <= 1, metrics


def test_the_cosine_schedule_warms_up_decays_to_zero_and_refuses_unknown_names():
    from trainers.reward.loop import LoopConfig, lr_factor

    cfg = LoopConfig(steps=110, warmup=10, schedule="cosine")
    factors = [lr_factor(cfg, s) for s in range(cfg.steps)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False)) and factors[-1] < 0.001
    assert {lr_factor(LoopConfig(steps=50), s) for s in range(50)} == {1.0}
    short = LoopConfig(steps=20, warmup=100, schedule="cosine")  # warm-up is at most a quarter of the run
    assert lr_factor(short, 4) == pytest.approx(1.0) and lr_factor(short, 3) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="`schedule`.*'linear'"):
        LoopConfig(schedule="linear")


def test_mirrored_batches_flip_whole_pairs_with_their_prompts_and_replay_the_same_on_resume():
    import torch

    from trainers.reward.data import PairBatch, mirror_half, mirror_prompt

    assert mirror_prompt("a red circle at the top left and a blue square at the right") == (
        "a red circle at the top right and a blue square at the left")
    assert mirror_prompt("a circle in the center, leftover words stay") == "a circle in the center, leftover words stay"
    win, lose = torch.rand(64, 3, 8, 8), torch.rand(64, 3, 8, 8)
    source, mask = torch.rand(64, 3, 8, 8), (torch.rand(64, 1, 8, 8) > 0.5).float()
    batch = PairBatch([f"{i} at the left" for i in range(64)], win, lose, source, mask)
    out = mirror_half(batch, np.random.default_rng(0))
    flipped = [i for i, p in enumerate(out.prompts) if p.endswith("right")]
    kept = [i for i, p in enumerate(out.prompts) if p.endswith("left")]
    assert 10 < len(flipped) < 54 and len(flipped) + len(kept) == 64
    for new, old in ((out.win, win), (out.lose, lose), (out.source, source), (out.mask, mask)):
        assert torch.equal(new[flipped], old[flipped].flip(-1)) and torch.equal(new[kept], old[kept])
    again = mirror_half(batch, np.random.default_rng(0))
    assert again.prompts == out.prompts and torch.equal(again.win, out.win)
    assert mirror_half(PairBatch(["left"], win[:1], lose[:1], None, None), np.random.default_rng(1)).source is None


def test_plain_images_in_an_edit_batch_get_no_source_and_the_reward_sees_the_source_masked():
    """A batch mixing edits and plain images gives the plain ones zeros (no image is its own source), and a
    reward reads the source as the editor does: what lies under the mask makes no difference."""
    import torch

    from editloop.models.data import edit_context
    from editloop.models.tokenizer import build_tokenizer
    from trainers.feedback.rewards import RewardModels, preference_scores

    white, top = np.full((64, 64, 3), 255, np.uint8), np.zeros((64, 64), np.uint8)
    top[:32] = 1
    source, mask = edit_context([white, None], [top, None], 64, 64)
    assert source[0].eq(1).all() and source[1].eq(0).all() and mask[1].eq(0).all()
    assert mask[0, 0, :32].eq(1).all() and mask[0, 0, 32:].eq(0).all()
    assert edit_context([None, None], [None, None], 64, 64) == (None, None)
    model = tiny_reward("aesthetic", 0).eval()
    rewards = RewardModels(preference={"aesthetic": (model, build_tokenizer())})
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts = ["a large red circle at the center on a white background"] * 2
    under, beside = source.clone(), source.clone()
    under[:, :, :32], beside[:, :, 40:] = -1.0, -1.0
    with torch.no_grad():
        alone = preference_scores(rewards, "aesthetic", images, prompts)
        assert torch.equal(alone, preference_scores(rewards, "aesthetic", images, prompts, source, mask))
        model.register_to_config(reads_source=True)  # as train_aesthetic records it for sourced labels
        read = preference_scores(rewards, "aesthetic", images, prompts, source, mask)
        assert not torch.allclose(read[:1], alone[:1])
        assert torch.allclose(read[:1], preference_scores(rewards, "aesthetic", images, prompts, under, mask)[:1])
        assert not torch.allclose(read[:1], preference_scores(rewards, "aesthetic", images, prompts, beside, mask)[:1])
