"""Health-check latency while a service works, and the memory its largest allowed request adds (issue 33).

    .venv/bin/python bench/health_latency.py --out bench/results/health_latency.json     # ~10 minutes

Each service runs as its own `editloop serve` process with the defaults (the committed base generator and editor,
the initial reward models of the served classes). A prober thread calls grpc.health.v1 Health.Check every 20 ms
over its own channel and records the latency, in three phases:
- idle (3 s);
- heaviest: the largest request the service allows is in flight (generator / editor: 16 images x 200 steps;
  Edit: the same on the instruction editor; aesthetic: 256 items at its input size; coherence: 16 items of
  256 x 256, EDITLOOP_REWARD_MAX_REQUEST_PIXELS), sent with a deadline of --window seconds; the service's RSS is
  sampled every 50 ms and its peak over the window, less the RSS after a warm-up request, is the memory the
  request adds;
- saturated: 32 clients send ordinary requests back to back for --window seconds.
Figures: p50 / p99 / max health latency per phase (goal: p99 < 100 ms) and the added RSS (goal: < 256 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from fuzz_services import PeakRss, start  # noqa: E402
from fuzz_services import png as noise_png  # noqa: E402

OPTIONS = [("grpc.max_send_message_length", 32 * 2**20), ("grpc.max_receive_message_length", 32 * 2**20)]


def probe(address: str, stop: threading.Event, out: list[float], every: float = 0.02) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while not stop.is_set():
            t = time.perf_counter()
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                out.append(1000 * (time.perf_counter() - t))
            except grpc.RpcError:
                out.append(10_000.0)  # a failed check counts as the deadline
            time.sleep(every)


def summary(ms: list[float]) -> dict:
    a = np.sort(np.array(ms))
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2)}


def requests(service: str) -> dict:
    """(method, heaviest request, ordinary request) per RPC measured on `service`."""
    from editloop.world import render
    from editloop.world.io import to_png
    from services.editor.probe import world_inputs
    from services.gen.editloop.v1 import common_pb2, editor_pb2, generator_pb2, reward_pb2
    from trainers.align.evaluate import held_out_edits

    scene, image, mask = world_inputs()
    heavy = common_pb2.SamplingParams(steps=200, seed=1)
    if service == "generator":
        return {"Generate": (generator_pb2.GenerateRequest(prompt=scene.caption, num_images=16, params=heavy),
                             generator_pb2.GenerateRequest(prompt=scene.caption))}
    if service == "editor":
        edit = held_out_edits(1, seed=1)[0]
        source = common_pb2.Image(png=to_png(render(edit.source)))
        return {"Inpaint": (editor_pb2.InpaintRequest(image=image, mask=mask, prompt=scene.caption, num_images=16,
                                                      params=heavy),
                            editor_pb2.InpaintRequest(image=image, mask=mask, prompt=scene.caption)),
                "Edit": (editor_pb2.EditRequest(image=source, instruction=edit.instruction, num_images=16,
                                                params=heavy),
                         editor_pb2.EditRequest(image=source, instruction=edit.instruction))}
    if service == "reward-aesthetic":
        items = [reward_pb2.ScoreItem(image=image, prompt=scene.caption)] * 256
        return {"Score": (reward_pb2.ScoreRequest(items=items), reward_pb2.ScoreRequest(items=items[:8]))}
    big = common_pb2.Image(png=noise_png((256, 256), "RGB", 1))
    return {"Score": (reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=big)] * 16),
                      reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(image=image)] * 8))}


SERVICE_NAMES = {"generator": "editloop.v1.Generator", "editor": "editloop.v1.Editor",
                 "reward-aesthetic": "editloop.v1.Reward", "reward-coherence": "editloop.v1.Reward"}


def call(channel: grpc.Channel, service: str, method: str, request, timeout: float) -> str:
    fn = channel.unary_unary(f"/{SERVICE_NAMES[service]}/{method}", request_serializer=lambda m: m.SerializeToString())
    try:
        fn(request, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def phase(address: str, work) -> list[float]:
    stop, ms = threading.Event(), []
    t = threading.Thread(target=probe, args=(address, stop, ms), daemon=True)
    t.start()
    try:
        work()
    finally:
        stop.set()
        t.join()
    return ms


def heaviest_phase(ch: grpc.Channel, service: str, method: str, request, address: str, pid: int,
                   window: float) -> dict:
    codes: list[str] = []
    with PeakRss(pid) as rss:
        ms = phase(address, lambda: codes.append(call(ch, service, method, request, window)))
    return {**summary(ms), "status": codes[0], "added_rss_mib": round((rss.peak - rss.start_rss) / 2**20, 1)}


def saturated_phase(ch: grpc.Channel, service: str, method: str, request, address: str,
                    window: float) -> dict:
    deadline = time.monotonic() + window
    done: list[str] = []

    def client() -> None:
        while time.monotonic() < deadline:
            done.append(call(ch, service, method, request, 600))

    def saturate() -> None:
        with ThreadPoolExecutor(32) as pool:
            for _ in range(32):
                pool.submit(client)

    ms = phase(address, saturate)
    return {**summary(ms), "requests": len(done), "ok": sum(c == "OK" for c in done)}


def measure(service: str, address: str, pid: int, window: float) -> dict:
    out: dict = {"idle": summary(phase(address, lambda: time.sleep(3)))}
    with grpc.insecure_channel(address, options=OPTIONS) as ch:
        for method, (heaviest, ordinary) in requests(service).items():
            call(ch, service, method, ordinary, 600)  # warm-up
            out[f"{method} heaviest"] = heaviest_phase(ch, service, method, heaviest, address, pid, window)
            out[f"{method} saturated"] = saturated_phase(ch, service, method, ordinary, address, window)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/health_latency.json")
    p.add_argument("--work", type=Path, default=ROOT / ".editloop/bench/health")
    p.add_argument("--window", type=float, default=20.0, help="seconds per loaded phase")
    p.add_argument("--services", nargs="+", default=list(SERVICE_NAMES), choices=list(SERVICE_NAMES))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(args.work / "state"), "EDITLOOP_DEVICE": "cpu"}
    serve = {"generator": ["generator"], "editor": ["editor"], "reward-aesthetic": ["reward", "--kind", "aesthetic"],
             "reward-coherence": ["reward", "--kind", "coherence"]}
    result: dict = {"window_s": args.window, "services": {}}
    for name in args.services:
        proc, address = start(serve[name], env, args.work / f"{name}.log")
        try:
            result["services"][name] = measure(name, address, proc.pid, args.window)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        for ph, row in result["services"][name].items():
            print(f"{name} {ph}: {row}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
