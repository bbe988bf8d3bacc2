"""Serving overhead: the same model through gRPC vs called in-process (issue: platform).

    .venv/bin/python bench/serving.py [--model-dir editloop/weights/base] [--steps 4]

0. Reward scoring throughput (items/s) through the reward service at client concurrency 1, 8 and
   32 (one item per request, dynamic batching on), against the model called in-process at its
   best batch size; p50/p99 latency. The reward model is an untrained tiny aesthetic model of the
   served class (speed does not depend on training).
1. Text-to-image throughput (images/s) through the generator service at client concurrency 1, 8
   and 32 (dynamic batching on), against the pipeline called in-process at its best batch size.
2. Inpaint latency (one image) through the editor service against a direct pipeline call with
   the same arguments, alternated call by call: medians, and the median of each pair's ratio gRPC / direct.
Results: bench/results/serving.json; figures are ratios taken in one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from editloop.models.reward import save_reward, tiny_reward
from editloop.settings import Settings
from editloop.world import cell_mask, render, sample_scene
from editloop.world.io import mask_to_png, to_png
from services.app import start_service
from services.core.channels import channel_options
from services.core.sampling import Sampling
from services.editor.core import EditorCore, InpaintJob
from services.gen.editloop.v1 import (
    common_pb2,
    editor_pb2,
    editor_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
)
from services.generator.core import GenerateJob, GeneratorCore
from services.reward.core import RewardCore, ScoreItem

RESULTS = Path(__file__).resolve().parent / "results"
PIN: dict[str, set[int] | None] = {"client": None}  # --pin: the reward load generator's own core
PROMPT = "a large red circle at the top left and a small blue square at the center on a white background"


def inprocess_throughput(core: GeneratorCore, steps: int, batches: list[int], total: int) -> dict[int, float]:
    out = {}
    for b in batches:
        job = GenerateJob(PROMPT, b, Sampling(steps, 4.0, 0, "ddim"))
        core.run([job], lambda *_: None)  # warm-up
        start = time.perf_counter()
        for _ in range(max(total // b, 1)):
            core.run([job], lambda *_: None)
        out[b] = max(total // b, 1) * b / (time.perf_counter() - start)
    return out


async def grpc_throughput(port: int, steps: int, concurrency: int, total: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(32)) as ch:
        stub = generator_pb2_grpc.GeneratorStub(ch)
        params = common_pb2.SamplingParams(steps=steps, seed=0)
        await stub.Generate(generator_pb2.GenerateRequest(prompt=PROMPT, params=params))
        latencies: list[float] = []
        remaining = total

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                await stub.Generate(generator_pb2.GenerateRequest(prompt=PROMPT, params=params))
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"images_per_s": len(latencies) / elapsed, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def reward_items(n: int) -> list[ScoreItem]:
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(n)]
    return [ScoreItem(render(s), s.caption) for s in scenes]


def inprocess_reward(core: RewardCore, batches: list[int], total: int) -> dict[int, float]:
    out = {}
    for b in batches:
        items = reward_items(b)
        core.score(items)
        reps = max(total // b, 1)
        start = time.perf_counter()
        for _ in range(reps):
            core.score(items)
        out[b] = reps * b / (time.perf_counter() - start)
    return out


def grpc_reward_in_subprocess(port: int, concurrency: int, total: int) -> dict[str, float]:
    """The load generator in its own process, so it does not share the server's interpreter."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1, initializer=_pin_client, initargs=(PIN["client"],)) as pool:
        return pool.apply(_reward_client, (port, concurrency, total))


def _pin_client(cores: set[int] | None) -> None:
    PIN["client"] = cores


def _reward_client(port: int, concurrency: int, total: int) -> dict[str, float]:
    if PIN["client"] is not None:
        os.sched_setaffinity(0, PIN["client"])
    return asyncio.run(grpc_reward(port, concurrency, total))


async def grpc_reward(port: int, concurrency: int, total: int) -> dict[str, float]:
    items = reward_items(64)
    msgs = [reward_pb2.ScoreItem(image=common_pb2.Image(png=to_png(i.image)), prompt=i.prompt) for i in items]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(32)) as ch:
        stub = reward_pb2_grpc.RewardStub(ch)
        await stub.Score(reward_pb2.ScoreRequest(items=msgs[:1]))
        latencies: list[float] = []
        counter = 0

        async def client() -> None:
            nonlocal counter
            while counter < total:
                counter += 1
                t = time.perf_counter()
                await stub.Score(reward_pb2.ScoreRequest(items=[msgs[counter % len(msgs)]]))
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"items_per_s": len(latencies) / elapsed, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


async def interleaved_inpaint(core: EditorCore, port: int, image: np.ndarray, mask: np.ndarray, steps: int,
                              reps: int) -> dict[str, float]:
    """Direct and gRPC calls with the same arguments, alternated rep by rep (the machine's speed drifts by tens of
    percent within a minute; alternating keeps that drift out of the ratio): medians, and the median ratio of each
    rep's pair."""
    job = InpaintJob(image, mask, PROMPT, 1, Sampling(steps, 4.0, 0, "ddim"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(32)) as ch:
        stub = editor_pb2_grpc.EditorStub(ch)
        req = editor_pb2.InpaintRequest(image=common_pb2.Image(png=to_png(image)),
                                        mask=common_pb2.Mask(png=mask_to_png(mask)), prompt=PROMPT,
                                        params=common_pb2.SamplingParams(steps=steps, seed=0, scheduler="ddim"))
        await stub.Inpaint(req)
        core.run([job], lambda *_: None)
        direct, via = [], []
        for _ in range(reps):
            t = time.perf_counter()
            core.run([job], lambda *_: None)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            await stub.Inpaint(req)
            via.append(time.perf_counter() - t)
    return {"direct": 1000 * statistics.median(direct), "grpc": 1000 * statistics.median(via),
            "ratio": statistics.median([v / d for v, d in zip(via, direct)])}


async def main_async(args: argparse.Namespace) -> dict:
    settings = Settings(state_dir=Path("/tmp/editloop-bench-serving"))
    report: dict = {"steps": args.steps, "torch_threads": torch.get_num_threads(), "device": "cpu",
                    "pinned": args.pin}
    if "reward" in args.parts:
        await reward_part(args, settings, report)
    if "generate" in args.parts:
        await generate_part(args, settings, report)
    if "inpaint" in args.parts:
        await inpaint_part(args, settings, report)
    return report


async def reward_part(args: argparse.Namespace, settings: Settings, report: dict) -> None:
    """0. reward scoring throughput"""
    reward_dir = Path("/tmp/editloop-bench-reward")
    save_reward(tiny_reward("aesthetic"), "aesthetic", reward_dir, extra={"trained": False})
    rcore = RewardCore(reward_dir, "aesthetic", device="cpu")
    r_inproc = inprocess_reward(rcore, [1, 8, 32, 64], args.reward_total)
    report["reward_inprocess_items_per_s"] = r_inproc
    running = await start_service("reward", settings, reward_dir, reward_kind="aesthetic", max_batch=64,
                                  max_delay=0.005)
    try:
        report["reward_grpc"] = {
            c: await asyncio.to_thread(grpc_reward_in_subprocess, running.port, c, args.reward_total)
            for c in (1, 8, 32)
        }
    finally:
        await running.stop(0)
    report["reward_grpc_over_best_inprocess_at_32"] = report["reward_grpc"][32]["items_per_s"] / max(r_inproc.values())


async def generate_part(args: argparse.Namespace, settings: Settings, report: dict) -> None:
    """1. generation throughput"""
    core = GeneratorCore(args.model_dir / "t2i", device="cpu")
    inproc = inprocess_throughput(core, args.steps, [1, 8, 32], args.total)
    best = max(inproc.values())
    report["inprocess_images_per_s"] = inproc
    running = await start_service("generator", settings, args.model_dir / "t2i", max_batch=32, max_delay=0.01,
                                  record=False)
    try:
        report["grpc"] = {c: await grpc_throughput(running.port, args.steps, c, args.total) for c in (1, 8, 32)}
    finally:
        await running.stop(0)
    report["grpc_over_best_inprocess_at_32"] = report["grpc"][32]["images_per_s"] / best


async def inpaint_part(args: argparse.Namespace, settings: Settings, report: dict) -> None:
    """2. inpaint latency"""
    scene = sample_scene(np.random.default_rng(0), 2)
    image, mask = render(scene), cell_mask(scene.objects[0].position)
    editor = EditorCore(args.model_dir / "inpaint", device="cpu")
    running = await start_service("editor", settings, args.model_dir / "inpaint", record=False,
                                  max_delay=args.inpaint_max_delay)
    try:
        report["inpaint_max_delay_s"] = args.inpaint_max_delay
        report["inpaint_latency_ms"] = await interleaved_inpaint(editor, running.port, image, mask, args.steps,
                                                                 args.reps)
    finally:
        await running.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("editloop/weights/base"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--total", type=int, default=64, help="images per throughput measurement")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--reward-total", type=int, default=1024, help="items per reward measurement")
    parser.add_argument("--parts", default="reward,generate,inpaint", help="which measurements, comma-separated")
    parser.add_argument("--pin", action="store_true",
                        help="server and in-process model on core 0 with one torch thread, the reward load "
                             "generator on core 1: as if the clients ran on another machine")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    parser.add_argument("--inpaint-max-delay", type=float, default=0.005,
                        help="the editor's batching window in seconds (the service's default: 0.005)")
    args = parser.parse_args()
    args.parts = set(args.parts.split(","))
    if args.pin:
        os.sched_setaffinity(0, {0})
        torch.set_num_threads(1)
        PIN["client"] = {1}
    report = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
