"""Reward services (one per kind) through a real gRPC channel; untrained tiny models of the real classes."""

import asyncio
import io
import json
import threading
import time

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from editloop.models.reward import load_reward, save_reward, tiny_reward
from editloop.settings import Settings
from editloop.world import cell_mask, render, sample_scene
from editloop.world.io import from_png, mask_from_png, mask_to_png, to_png
from services.app import start_service
from services.core.sampling import check_prompt
from services.gen.editloop.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.reward.core import RewardCore, ScoreItem


@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    for kind in ("aesthetic", "alignment", "coherence"):
        save_reward(tiny_reward(kind, seed=1), kind, root / kind, extra={"trained": False})
    return root


def call(kind, reward_dirs, tmp_path, body):
    async def go():
        running = await start_service("reward", Settings(state_dir=tmp_path), reward_dirs / kind, reward_kind=kind,
                                      max_delay=0.02)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                return await body(reward_pb2_grpc.RewardStub(ch))
        finally:
            await running.stop(0)

    return asyncio.run(go())


def items(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, 2)
        img = to_png(render(scene))
        out.append(reward_pb2.ScoreItem(image=common_pb2.Image(png=img), prompt=scene.caption,
                                        source=common_pb2.Image(png=img),
                                        mask=common_pb2.Mask(png=mask_to_png(cell_mask(scene.objects[0].position)))))
    return out


def test_score_matches_the_model_in_process_and_names_the_version(reward_dirs, tmp_path):
    async def body(stub):
        many = await asyncio.gather(*[stub.Score(reward_pb2.ScoreRequest(items=items(3, s))) for s in range(4)])
        info = await stub.ModelInfo(reward_pb2.ModelInfoRequest())
        return many, info

    many, info = call("aesthetic", reward_dirs, tmp_path, body)
    assert info.kind == "aesthetic" and json.loads(info.config_json)["patch_size"] == 8
    assert all(r.model.version == info.model.version and len(r.scores) == 3 for r in many)
    # the same numbers as the model called directly: batching does not mix requests up
    core = RewardCore(reward_dirs / "aesthetic", "aesthetic", device="cpu")
    direct = core.score([ScoreItem(from_png(i.image.png), i.prompt, from_png(i.source.png), mask_from_png(i.mask.png))
                         for i in items(3, 2)])
    assert np.allclose(direct, many[2].scores, atol=1e-4)


def test_coherence_score_map(reward_dirs, tmp_path):
    async def body(stub):
        m = await stub.ScoreMap(reward_pb2.ScoreMapRequest(item=items(1)[0]))
        s = await stub.Score(reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=items(1)[0].image)]))
        return m, s

    m, s = call("coherence", reward_dirs, tmp_path, body)
    pixel_map = Image.open(io.BytesIO(m.map_png))
    assert pixel_map.mode == "L" and pixel_map.size == (64, 64)
    assert 0.0 <= m.score <= 1.0 and abs(s.scores[0] - m.score) < 1e-3


def sized_png(side: int) -> common_pb2.Image:
    from io import BytesIO

    from PIL import Image as PILImage

    buf = BytesIO()
    PILImage.fromarray(np.full((side, side, 3), 128, np.uint8)).save(buf, format="PNG")
    return common_pb2.Image(png=buf.getvalue())


BAD = [
    ("aesthetic", reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=sized_png(128), prompt="a")]),
     grpc.StatusCode.INVALID_ARGUMENT, "`items[0].image` must be 64x64 for this aesthetic model"),  # was INTERNAL
    ("coherence", reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=sized_png(512))]),
     grpc.StatusCode.INVALID_ARGUMENT, "`items[0].image` is 512x512; the coherence model takes at most 256 pixels "
                                       "per side (EDITLOOP_REWARD_MAX_SIDE)"),
    ("coherence", reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=sized_png(256))] * 64),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "`items` hold over 1048576 pixels by items[16]"),  # refused before scoring
    ("coherence", reward_pb2.ScoreMapRequest(item=reward_pb2.ScoreItem(image=sized_png(1024))),
     grpc.StatusCode.INVALID_ARGUMENT, "`item.image` is 1024x1024; the coherence model takes at most 256"),
    ("aesthetic", reward_pb2.ScoreRequest(), grpc.StatusCode.INVALID_ARGUMENT, "`items` must hold 1..256 items, got 0"),
    ("alignment", reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=common_pb2.Image(png=b"x"), prompt="a")]),
     grpc.StatusCode.INVALID_ARGUMENT, "`items[0].image` is not a readable PNG"),
    ("alignment", reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=items(1)[0].image)]),
     grpc.StatusCode.INVALID_ARGUMENT, "`items[0].prompt` is empty"),
    ("aesthetic", reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=items(1)[0].image, prompt="a",
                                                                      mask=items(1)[0].mask)]),
     grpc.StatusCode.INVALID_ARGUMENT, "`items[0].mask` needs `items[0].source`"),
    ("aesthetic", reward_pb2.ScoreMapRequest(item=items(1)[0]), grpc.StatusCode.FAILED_PRECONDITION,
     "coherence model only"),
]


@pytest.mark.parametrize("kind, request_, code, text", BAD)
def test_bad_requests(reward_dirs, tmp_path, kind, request_, code, text):
    async def body(stub):
        method = stub.ScoreMap if isinstance(request_, reward_pb2.ScoreMapRequest) else stub.Score
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request_)
        return err.value

    err = call(kind, reward_dirs, tmp_path, body)
    assert err.code() == code and text in err.details()


def test_reward_directories_refuse_the_wrong_kind(reward_dirs, tmp_path):
    with pytest.raises(ValueError, match="is a coherence reward model, not aesthetic"):
        load_reward(reward_dirs / "coherence", "aesthetic")
    with pytest.raises(FileNotFoundError, match="not a reward model directory"):
        load_reward(tmp_path, "aesthetic")
    with pytest.raises(ValueError, match="a coherence reward must be a CoherenceReward"):
        save_reward(tiny_reward("aesthetic"), "coherence", tmp_path / "x")
    kind, model, tok = load_reward(reward_dirs / "alignment")
    ref = tiny_reward("alignment", seed=1)
    assert kind == "alignment" and tok is not None
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_score_and_serve_reward_from_the_command_line(reward_dirs, tmp_path, capsys):
    import os
    import subprocess
    import sys

    from editloop.cli.main import main
    from editloop.world.io import save_png

    assert main(["models", "init-reward", "--kind", "alignment", "--out", str(tmp_path / "r")]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "editloop.cli.main", "serve", "reward", "--kind", "alignment",
                             "--model", str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "EDITLOOP_STATE_DIR": str(tmp_path / "s")})
    try:
        address = next(line.split()[-1] for line in proc.stdout if line.startswith("READY"))
        scene = sample_scene(np.random.default_rng(1), 1)
        save_png(render(scene), tmp_path / "a.png")
        assert main(["score", str(tmp_path / "a.png"), "--prompt", scene.caption, "--address", address]) == 0
        assert main(["score", str(tmp_path / "a.png"), "--address", address]) == 2
        assert main(["health", address]) == 0  # the containers' and pods' health check
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert main(["health", address, "--timeout", "1"]) == 1
    out, err = capsys.readouterr()
    assert "SERVING" in out and "unreachable (UNAVAILABLE)" in out
    assert "scored by alignment" in out and "INVALID_ARGUMENT: `items[0].prompt` is empty" in err
    assert main(["serve", "reward"]) == 2



def test_prompt_counts_on_request_threads_never_disturb_the_batch_workers_tokenizer(reward_dirs):
    """Prompt token counts (request threads) and a batch's padded tokenization (the batch worker) share no
    tokenizer state: a fast tokenizer keeps truncation and padding on one Rust object, and counts racing padded
    batch calls once left batches the tokenizer could not pad (a spurious error for a valid request, about one in
    a few hundred batches at 32 concurrent clients)."""
    core = RewardCore(reward_dirs / "aesthetic", "aesthetic", device="cpu")
    rng = np.random.default_rng(3)
    scored = [ScoreItem(render(s), s.caption) for s in (sample_scene(rng) for _ in range(8))]
    errors, stop = [], time.monotonic() + 8

    def count() -> None:
        k = 0
        while time.monotonic() < stop:
            k += 1
            try:
                check_prompt(scored[k % len(scored)].prompt, tokens=core.tokens)
            except Exception as exc:  # collected for the assertion
                errors.append(exc)

    def score() -> None:
        while time.monotonic() < stop:
            try:
                core.score(scored)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=count) for _ in range(3)] + [threading.Thread(target=score)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], errors[:1]
    # the race shows only now and then under load (about 10 failed batches in 40 s on an idle 2-core machine),
    # so the stress above can miss it: the counter's tokenizer must be its own object
    assert core.tokens._tokenizer is not core.tokenizer
