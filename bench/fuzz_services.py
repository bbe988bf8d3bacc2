"""Fuzz every model service through its real port: hypothesis over the proto messages plus byte mutations.

    .venv/bin/python bench/fuzz_services.py --requests 10000 --out bench/results/fuzz_services.json

Each service (generator, editor, aesthetic reward, coherence reward) runs as its own `editloop serve` process on
tiny models built from the configs (the statuses do not depend on the weights; the committed base would only make
the valid requests slower). Half the requests are messages hypothesis draws from each RPC's request descriptor
(every field: text of any Unicode up to 30,000 characters, integers over the field's whole range, floats with NaN
and infinities, image bytes that are valid PNGs of 1 to 2,000 pixels a side, JPEGs, PNG headers claiming 20000 x
20000, byte-mutated PNGs or noise, up to 300 repeated items); the other half are a valid request's bytes mutated
(bits flipped, bytes inserted, deleted, truncated) and sent raw. Counted per service and status code; a response
text holding a traceback, a heap address or more than 400 characters is counted as a leak. Afterwards the service
must answer a valid request and health must say SERVING; its log must hold no traceback. Peak RSS of the service
process is sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import psutil
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LEAK = re.compile(r"Traceback|File \"|0x[0-9a-f]{6,}|object at ")
INT_RANGES = {FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
              FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1)}


@functools.lru_cache(maxsize=512)
def png(side: tuple[int, int], mode: str = "RGB", seed: int = 0) -> bytes:
    """A noise PNG of `side` (width, height) (cached: hypothesis draws the same ones often)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (side[1], side[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG claiming width x height (no image data follows)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def jpeg(side: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to eight random edits of `data`: flip a bit, insert, delete, overwrite a run, or truncate."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        kind = int(rng.integers(0, 5))
        at = int(rng.integers(0, max(len(out), 1)))
        if kind == 0 and out:
            out[at % len(out)] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            out[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        elif kind == 2 and out:
            del out[at:at + int(rng.integers(1, 16))]
        elif kind == 3 and out:
            out[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif out:
            del out[at:]
    return bytes(out)


def image_bytes() -> st.SearchStrategy[bytes]:
    sides = st.one_of(st.integers(1, 96), st.sampled_from([64, 128, 255, 256, 257, 1024, 1025, 2000]))
    valid = st.builds(lambda w, h, mode, seed: png((w, h), mode, seed), sides, sides, st.sampled_from(["RGB", "L"]),
                      st.integers(0, 3))
    mutated = st.builds(lambda w, seed: mutate(png((w, w)), np.random.default_rng(seed)), st.integers(8, 64),
                        st.integers(0, 2**32 - 1))
    return st.one_of(valid, mutated, st.just(png_header(20000, 20000)), st.just(png_header(0, 5)),
                     st.builds(jpeg), st.binary(max_size=300), st.just(b""))


def text() -> st.SearchStrategy[str]:
    words = st.sampled_from(["a small blue square at the center on a gray background", "make the red circle blue",
                             "remove the green triangle", "ddim", "euler", "dpm", "noise", "input", "aesthetic"])
    return st.one_of(words, st.text(max_size=64), st.text(min_size=200, max_size=30_000), st.just(""))


def field_value(f: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(f.message_type, depth + 1)
    if f.type == FieldDescriptor.TYPE_BYTES:
        return image_bytes()
    if f.type == FieldDescriptor.TYPE_STRING:
        return text()
    if f.type in INT_RANGES:
        low, high = INT_RANGES[f.type]
        return st.one_of(st.integers(-2, 4), st.integers(low, high))
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.one_of(st.floats(-5, 40, width=32), st.floats(width=32))
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in f.enum_type.values])
    raise TypeError(f"no strategy for field {f.full_name} of type {f.type}")


def message_strategy(descriptor, depth: int = 0) -> st.SearchStrategy[dict]:
    """Dicts of field values for `descriptor` (any subset of fields; repeated ones as lists)."""
    optional = {}
    for f in descriptor.fields:
        if depth > 3 and f.type == FieldDescriptor.TYPE_MESSAGE:
            continue
        value = field_value(f, depth)
        if f.is_repeated:
            value = st.one_of(st.lists(value, max_size=4), st.lists(value, min_size=250, max_size=300))
        optional[f.name] = value
    return st.fixed_dictionaries({}, optional=optional)


def fill(msg, values: dict):
    """`msg` with message_strategy's dict written into it (present sub-messages set even when empty)."""
    for name, value in values.items():
        f = msg.DESCRIPTOR.fields_by_name[name]
        if f.type == FieldDescriptor.TYPE_MESSAGE and f.is_repeated:
            for item in value:
                fill(getattr(msg, name).add(), item)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, name).SetInParent()
            fill(getattr(msg, name), value)
        elif f.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


SERVICES = {
    "generator": ("editloop.v1.Generator", {"Generate": "GenerateRequest", "GenerateStream": "GenerateRequest"}),
    "editor": ("editloop.v1.Editor", {"Inpaint": "InpaintRequest", "Outpaint": "InpaintRequest",
                                      "Erase": "InpaintRequest", "Edit": "EditRequest"}),
    "reward-aesthetic": ("editloop.v1.Reward", {"Score": "ScoreRequest", "ScoreMap": "ScoreMapRequest",
                                                "ModelInfo": "ModelInfoRequest"}),
    "reward-coherence": ("editloop.v1.Reward", {"Score": "ScoreRequest", "ScoreMap": "ScoreMapRequest",
                                                "ModelInfo": "ModelInfoRequest"}),
}
STREAMING = {"GenerateStream"}


def request_classes() -> dict[str, type]:
    from services.gen.editloop.v1 import editor_pb2, generator_pb2, reward_pb2

    out = {}
    for module in (editor_pb2, generator_pb2, reward_pb2):
        for name in module.DESCRIPTOR.message_types_by_name:
            out[name] = getattr(module, name)
    return out


def valid_request(service: str, method: str) -> bytes:
    """A request the service answers OK (the seed of the byte mutations, and the check afterwards)."""
    from editloop.world import render
    from editloop.world.io import to_png
    from services.editor.probe import world_inputs
    from services.gen.editloop.v1 import common_pb2, editor_pb2, generator_pb2, reward_pb2

    scene, image, mask = world_inputs()
    params = common_pb2.SamplingParams(steps=2, seed=1)
    item = reward_pb2.ScoreItem(image=image, prompt=scene.caption, source=image, mask=mask)
    if service == "generator":
        msg = generator_pb2.GenerateRequest(prompt=scene.caption, params=params)
    elif method == "Edit":
        from trainers.align.evaluate import held_out_edits

        edit = held_out_edits(1, seed=1)[0]
        msg = editor_pb2.EditRequest(image=common_pb2.Image(png=to_png(render(edit.source))),
                                     instruction=edit.instruction, params=params)
    elif service == "editor":
        msg = editor_pb2.InpaintRequest(image=image, mask=mask, prompt=scene.caption, params=params)
    elif method == "ScoreMap":
        msg = reward_pb2.ScoreMapRequest(item=item)
    elif method == "ModelInfo":
        msg = reward_pb2.ModelInfoRequest()
    else:
        msg = reward_pb2.ScoreRequest(items=[item])
    return msg.SerializeToString()


def call_raw(channel: grpc.Channel, full_service: str, method: str, data: bytes,
             timeout: float) -> tuple[str, str, float]:
    """Send `data` as the request bytes; (status code name, details, seconds)."""
    path = f"/{full_service}/{method}"
    t0 = time.perf_counter()
    try:
        if method in STREAMING:
            for _ in channel.unary_stream(path)(data, timeout=timeout):
                pass
        else:
            channel.unary_unary(path)(data, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", time.perf_counter() - t0
    return "OK", "", time.perf_counter() - t0


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self.peak = self.proc.memory_info().rss
        self.start_rss = self.peak
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()


def make_models(root: Path) -> dict[str, list[str]]:
    """Tiny models from the configs; each service's `editloop serve` arguments."""
    from editloop.models.reward import save_reward, tiny_reward
    from editloop.models.zoo import make_pipeline, tiny_components

    if not (root / "inpaint").exists():
        make_pipeline(tiny_components(seed=0)).save_pretrained(root / "t2i")
        make_pipeline(tiny_components(seed=0, inpainting=True)).save_pretrained(root / "inpaint")
        for kind in ("aesthetic", "coherence"):
            save_reward(tiny_reward(kind, seed=1), kind, root / kind, extra={"trained": False})
        from editloop.models.zoo import load_pipeline
        from trainers.align.editor_train import editor_from_t2i

        pipe = load_pipeline(root / "t2i", "t2i", device="cpu", dtype="fp32")
        editor_from_t2i(pipe, "causal").save(root / "instruct", {"version": "tiny-causal"})
    return {"generator": ["generator", "--model", str(root / "t2i")],
            "editor": ["editor", "--model", str(root / "inpaint")],
            "reward-aesthetic": ["reward", "--kind", "aesthetic", "--model", str(root / "aesthetic")],
            "reward-coherence": ["reward", "--kind", "coherence", "--model", str(root / "coherence")]}


def start(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "editloop.cli.main", "serve", *args, "--port", "0"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    for line in proc.stdout:
        if line.startswith("READY"):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.split()[-1]
    raise SystemExit(f"{args[0]} did not start:\n{log.read_text()[-3000:]}")


def fuzz_one(name: str, address: str, n: int, seed: int, timeout: float,
             progress: Callable[[int], None] | None = None) -> dict:
    """n requests to the service at `address` (half hypothesis messages, half mutated bytes); counts."""
    full, methods = SERVICES[name]
    classes = request_classes()
    codes: Counter[str] = Counter()
    leaks: list[str] = []
    slowest: list[tuple[float, str, str]] = []
    rng = np.random.default_rng(seed)
    seeds = {m: valid_request(name, m) for m in methods}
    options = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 64 * 2**20)]
    with grpc.insecure_channel(address, options=options) as channel:
        def record(code: str, details: str, seconds: float, method: str) -> None:
            codes[code] += 1
            slowest.append((round(seconds, 3), method, code))
            slowest.sort(reverse=True)
            del slowest[5:]
            if LEAK.search(details) or len(details) > 400:
                leaks.append(f"{code}: {details[:200]}")
            if progress is not None:
                progress(1)

        strategies = st.one_of(*[st.tuples(st.just(m), message_strategy(classes[c].DESCRIPTOR))
                                 for m, c in methods.items()])

        @settings(max_examples=n // 2, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(drawn=strategies)
        def structured(drawn: tuple[str, dict]) -> None:
            method, values = drawn
            data = fill(classes[methods[method]](), values).SerializeToString()
            record(*call_raw(channel, full, method, data, timeout), method)

        structured()
        for _ in range(n - n // 2):
            method = list(methods)[int(rng.integers(0, len(methods)))]
            record(*call_raw(channel, full, method, mutate(seeds[method], rng), timeout), method)
        after = {m: call_raw(channel, full, m, seeds[m], 120)[0] for m in methods}
    return {"requests": sum(codes.values()), "codes": dict(sorted(codes.items())), "leaks": leaks[:20],
            "leak_count": len(leaks), "valid_after": after, "slowest": slowest}


def health(address: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def run(work: Path, n: int, seed: int, names: list[str], timeout: float = 60,
        done: Callable[[dict], None] | None = None) -> dict:
    import os

    from tqdm import tqdm

    serve_args = make_models(work / "models")
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(work / "state"), "EDITLOOP_DEVICE": "cpu",
           "EDITLOOP_INSTRUCT_MODEL": str(work / "models" / "instruct")}
    out = {}
    for name in names:
        log = work / f"{name}.log"
        proc, address = start(serve_args[name], env, log)
        try:
            with PeakRss(proc.pid) as rss, tqdm(total=n, desc=name, unit="req", mininterval=5) as bar:
                t0 = time.time()
                result = fuzz_one(name, address, n, seed, timeout, bar.update)
                result["seconds"] = round(time.time() - t0, 1)
            result["health_after"] = health(address)
            result["rss_start_mib"] = round(rss.start_rss / 2**20, 1)
            result["rss_peak_mib"] = round(rss.peak / 2**20, 1)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        text = log.read_text()
        result["log_tracebacks"] = text.count("Traceback")
        out[name] = result
        if done is not None:
            done(out)
        print(f"{name}: {result['codes']} leaks {result['leak_count']} tracebacks {result['log_tracebacks']} "
              f"valid after {result['valid_after']} health {result['health_after']} peak RSS "
              f"{result['rss_peak_mib']} MiB (start {result['rss_start_mib']})", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000, help="per service")
    p.add_argument("--work", type=Path, default=ROOT / ".editloop/bench/fuzz")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/fuzz_services.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--services", nargs="+", default=list(SERVICES), choices=list(SERVICES))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(services: dict) -> None:  # after each service: a long run keeps what it measured
        args.out.write_text(json.dumps({"requests_per_service": args.requests, "seed": args.seed,
                                        "services": services}, indent=1))

    run(args.work, args.requests, args.seed, args.services, done=write)


if __name__ == "__main__":
    main()
