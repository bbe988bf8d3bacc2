"""Generator and editor services through a real gRPC channel on port 0."""

import asyncio
import re

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from editloop.db import Generation, make_engine, make_sessionmaker
from editloop.settings import Settings
from editloop.store import open_store
from editloop.world import cell_mask, render, sample_scene
from editloop.world.io import from_png, mask_to_png, to_png
from services.app import start_service
from services.core.server import channel_options
from services.gen.editloop.v1 import common_pb2, editor_pb2, editor_pb2_grpc, generator_pb2, generator_pb2_grpc

PROMPT = "a large red circle at the top left on a white background"


def run(coro):
    return asyncio.run(coro)


async def with_service(kind, settings, models, body, **kw):
    running = await start_service(kind, settings, models / ("t2i" if kind == "generator" else "inpaint"), **kw)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=channel_options(32)) as ch:
            return await body(ch)
    finally:
        await running.stop(0)


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=tmp_path / "state")


def gen_request(**kw):
    params = common_pb2.SamplingParams(steps=kw.pop("steps", 2), seed=kw.pop("seed", 7),
                                       guidance=kw.pop("guidance", 0), scheduler=kw.pop("scheduler", ""))
    return generator_pb2.GenerateRequest(prompt=kw.pop("prompt", PROMPT), num_images=kw.pop("n", 2),
                                         params=params, **kw)


def test_generate_is_seeded_recorded_and_names_its_model(settings, tiny_models):
    async def body(ch):
        stub = generator_pb2_grpc.GeneratorStub(ch)
        a = await stub.Generate(gen_request(record=True))
        b = await stub.Generate(gen_request())
        check = health_pb2.HealthCheckRequest(service="editloop.v1.Generator")
        health = await health_pb2_grpc.HealthStub(ch).Check(check)
        return a, b, health

    a, b, health = run(with_service("generator", settings, tiny_models, body))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(a.images) == 2 and a.model.name == "base-t2i" and a.model.version
    assert a.params.steps == 2 and a.params.guidance == 4.0 and a.params.scheduler == "ddim"
    imgs = [from_png(i.png) for i in a.images]
    assert all(im.shape == (64, 64, 3) for im in imgs)
    assert [i.png for i in a.images] == [i.png for i in b.images]  # same seed, same pixels
    # recorded: rows in the database, bytes in the blob store
    store = open_store(settings)
    with make_sessionmaker(make_engine(settings.resolved_database_url()))() as s:
        gen = s.scalars(select(Generation)).one()
        assert gen.id == a.generation_id and gen.seed == 7 and gen.steps == 2 and gen.model_version == a.model.version
        assert [gi.image.blob_key for gi in gen.images] == [i.blob_key for i in a.images]
    assert store.get(a.images[0].blob_key) == a.images[0].png


def test_stream_reports_every_step_then_the_result(settings, tiny_models):
    async def body(ch):
        return [e async for e in generator_pb2_grpc.GeneratorStub(ch).GenerateStream(gen_request(steps=4, n=1))]

    events = run(with_service("generator", settings, tiny_models, body))
    steps = [e.progress.step for e in events if e.HasField("progress")]
    assert steps == [1, 2, 3, 4] and all(e.progress.total == 4 for e in events[:-1])
    assert events[-1].HasField("result") and len(events[-1].result.images) == 1


def test_concurrent_requests_are_batched_and_each_gets_its_own_images(settings, tiny_models):
    async def body(ch):
        stub = generator_pb2_grpc.GeneratorStub(ch)
        many = await asyncio.gather(*[stub.Generate(gen_request(n=1, seed=s)) for s in range(6)])
        single = await stub.Generate(gen_request(n=1, seed=3))
        return many, single

    many, single = run(with_service("generator", settings, tiny_models, body, max_delay=0.05))
    assert len({r.images[0].png for r in many}) == 6
    # image for seed 3 is the same alone or inside a batch (up to float noise in PNG rounding)
    diff = np.abs(from_png(many[3].images[0].png).astype(int) - from_png(single.images[0].png).astype(int))
    assert diff.max() <= 2


UNDECODABLE = [
    (b"\xff\xff\xff\xff", "(4 bytes)"),  # garbage: an unterminated varint
    (b"\x0a\x02\xff\xfe", "(4 bytes)"),  # field 1 (prompt) holding invalid UTF-8
    (b"\x12\x05\x01", "(3 bytes)"),  # a field longer than the message
]


@pytest.mark.parametrize(("raw", "size"), UNDECODABLE)
def test_bytes_that_do_not_parse_are_invalid_argument_and_counted(settings, tiny_models, raw, size):
    from services.core.metrics import REQUESTS

    def count() -> float:
        return REQUESTS.labels("editloop.v1.Generator", "Generate", "INVALID_ARGUMENT")._value.get()

    async def body(ch):
        call = ch.unary_unary("/editloop.v1.Generator/Generate")  # raw bytes out, raw bytes back
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(raw)
        ok = await generator_pb2_grpc.GeneratorStub(ch).Generate(gen_request(n=1))
        return err.value, ok

    before = count()
    err, ok = run(with_service("generator", settings, tiny_models, body, record=False))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert err.details() == f"the request {size} is not a valid GenerateRequest message"
    assert len(ok.images) == 1 and count() == before + 1  # served on, and the rejected request was counted


@pytest.mark.parametrize(
    "request_kwargs, code, text",
    [
        (dict(prompt="   "), grpc.StatusCode.INVALID_ARGUMENT, "`prompt` is empty"),
        (dict(steps=500), grpc.StatusCode.INVALID_ARGUMENT, "`params.steps` must be in 1..200, got 500"),
        (dict(n=40), grpc.StatusCode.INVALID_ARGUMENT, "`num_images` must be in 1..16, got 40"),
        (dict(scheduler="plms"), grpc.StatusCode.INVALID_ARGUMENT, "`params.scheduler` must be one of"),
        (dict(guidance=-1), grpc.StatusCode.INVALID_ARGUMENT, "`params.guidance` must be in"),
        (dict(model=common_pb2.ModelRef(name="sdxl")), grpc.StatusCode.NOT_FOUND, "'sdxl' is not served"),
        (dict(model=common_pb2.ModelRef(version="\U0010fffd" * 900)), grpc.StatusCode.NOT_FOUND,
         "... (900 characters) is not served"),  # quoted as a short prefix, escapes included
        (dict(prompt="red " * 100), grpc.StatusCode.INVALID_ARGUMENT,
         "`prompt` is 102 tokens; the text encoder takes 40 (start and end included), and would cut the rest"),
        (dict(prompt="x" * 40 * 1024 * 1024), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ],
)
def test_generator_bad_input_gets_a_clear_status_and_the_server_keeps_serving(settings, tiny_models,
                                                                               request_kwargs, code, text):
    async def body(ch):
        stub = generator_pb2_grpc.GeneratorStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(gen_request(**request_kwargs))
        ok = await stub.Generate(gen_request(n=1))
        return err.value, ok

    err, ok = run(with_service("generator", settings, tiny_models, body))
    assert err.code() == code and text in err.details(), err.details()
    assert len(err.details()) < 400
    assert len(ok.images) == 1


def test_queue_limit_answers_resource_exhausted(settings, tiny_models):
    async def body(ch):
        stub = generator_pb2_grpc.GeneratorStub(ch)
        # 50 steps: the first batch is still sampling when the others arrive, whatever the machine load
        calls = [stub.Generate(gen_request(n=4, steps=50)) for _ in range(4)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(with_service("generator", settings, tiny_models, body, max_queue=8, max_batch=4))
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert errors and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
    assert "queue is full" in errors[0].details()
    assert any(not isinstance(r, Exception) for r in results)


def test_deadline_and_cancel_stop_sampling(settings, tiny_models):
    async def body(ch):
        stub = generator_pb2_grpc.GeneratorStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(gen_request(n=1, steps=200), timeout=0.3)
        call = stub.GenerateStream(gen_request(n=1, steps=200))
        seen = 0
        async for event in call:
            seen = event.progress.step
            if seen >= 2:
                call.cancel()
                break
        ok = await stub.Generate(gen_request(n=1), timeout=60)
        return err.value, seen, ok

    err, seen, ok = run(with_service("generator", settings, tiny_models, body))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert seen >= 2 and len(ok.images) == 1  # served again right after; the 200-step runs were stopped


def edit_request(image=None, mask=None, prompt=PROMPT, **kw):
    scene = sample_scene(np.random.default_rng(0), 2)
    image = to_png(render(scene)) if image is None else image
    mask = mask_to_png(cell_mask(scene.objects[0].position)) if mask is None else mask
    return editor_pb2.InpaintRequest(image=common_pb2.Image(png=image), mask=common_pb2.Mask(png=mask),
                                     prompt=prompt, num_images=kw.pop("n", 1),
                                     params=common_pb2.SamplingParams(steps=2, seed=1), **kw)


def test_editor_inpaint_outpaint_erase_and_edit_without_an_instruction_editor(tmp_path, tiny_models):
    settings = Settings(state_dir=tmp_path / "state", instruct_model=tmp_path / "no-editor")

    async def body(ch):
        stub = editor_pb2_grpc.EditorStub(ch)
        inp = await stub.Inpaint(edit_request(n=2, record=True))
        out = await stub.Outpaint(edit_request())
        era = await stub.Erase(edit_request(prompt=""))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Edit(editor_pb2.EditRequest(instruction="make the red circle blue"))
        return inp, out, era, err.value

    inp, out, era, err = run(with_service("editor", settings, tiny_models, body))
    assert len(inp.images) == 2 and inp.generation_id and inp.model.name == "base-inpaint"
    assert from_png(out.images[0].png).shape == (64, 64, 3) and len(era.images) == 1
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "editloop train align" in err.details()


def instruct_request(**kw):
    image = kw.pop("image", None) or to_png(render(sample_scene(np.random.default_rng(3), 1)))
    params = common_pb2.SamplingParams(steps=kw.pop("steps", 2), seed=kw.pop("seed", 5),
                                       guidance=kw.pop("guidance", 0), scheduler=kw.pop("scheduler", ""))
    return editor_pb2.EditRequest(image=common_pb2.Image(png=image), num_images=kw.pop("n", 1), params=params,
                                  instruction=kw.pop("instruction", "make the red circle blue"), **kw)


@pytest.mark.parametrize("arch", ["causal", "concat"])
def test_edit_serves_the_instruction_editor_seeded_and_recorded(tmp_path, tiny_models, tiny_instruct, arch):
    settings = Settings(state_dir=tmp_path / "state", instruct_model=tiny_instruct[arch])

    async def body(ch):
        stub = editor_pb2_grpc.EditorStub(ch)
        a = await stub.Edit(instruct_request(n=2, record=True, image_guidance=2.0))
        b, c = await asyncio.gather(stub.Edit(instruct_request(n=1, image_guidance=2.0)),
                                    stub.Edit(instruct_request(n=1, image_guidance=2.0, seed=6)))
        d = await stub.Edit(instruct_request(n=1, image_guidance=2.0, start="input"))
        return a, b, c, d

    a, b, c, d = run(with_service("editor", settings, tiny_models, body))
    assert a.start == "noise" and d.start == "input"  # the editor's default_start, then the request's
    assert len(a.images) == 2 and a.model.name == "default-instruct" and a.model.version == f"tiny-{arch}"
    assert a.params.steps == 2 and a.params.guidance == 5.0 and a.generation_id
    first = from_png(a.images[0].png)
    assert first.shape == (64, 64, 3)
    # image i of a request uses seed + i, whatever shares its batch: b (seed 5) repeats a's first image,
    # c (seed 6) is a's second
    diff = lambda x, y: int(np.abs(from_png(x.png).astype(int) - from_png(y.png).astype(int)).max())  # noqa: E731
    assert diff(b.images[0], a.images[0]) <= 2 and diff(c.images[0], a.images[1]) <= 2
    assert diff(b.images[0], c.images[0]) > 10
    assert diff(d.images[0], a.images[0]) > 2  # same seed, other start: the noised input, not pure noise
    engine = make_engine(settings.resolved_database_url())
    with make_sessionmaker(engine)() as s:
        gen = s.scalars(select(Generation).where(Generation.id == a.generation_id)).one()
        assert gen.kind == "edit" and gen.prompt.text == "make the red circle blue" and gen.source_image_id


def rgb_png(size: int) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (size, size)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(instruction="paint the red circle bleu"), "closest valid forms: 'make the red circle blue'"),
        (dict(instruction=""), "`instruction` is empty"),
        (dict(instruction="make it blue " * 1500), "`instruction` is 19500 characters; the limit is 200"),
        (dict(instruction="please " * 25), "`instruction` 'please please please please please please please please "
                                           "plea'... (175 characters) is not an instruction"),  # a prefix only
        (dict(guidance=12.0), "`params.guidance` must be in (0, 10.0]"),
        (dict(image_guidance=-1.0), "`image_guidance` must be in (0, 10.0]"),
        (dict(scheduler="euler"), "`params.scheduler` must be 'ddim'"),
        (dict(n=17), "`num_images` must be in 1..16"),
        (dict(image=rgb_png(32)), "`image` must be 64x64"),
        (dict(start="middle"), "`start` must be one of ['noise', 'input'] (or empty: the editor's default 'noise'), "
                               "got 'middle'"),
    ],
)
def test_edit_bad_input_is_invalid_argument(tmp_path, tiny_models, tiny_instruct, kwargs, text):
    settings = Settings(state_dir=tmp_path / "state", instruct_model=tiny_instruct["causal"])

    async def body(ch):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await editor_pb2_grpc.EditorStub(ch).Edit(instruct_request(**kwargs))
        return err.value

    err = run(with_service("editor", settings, tiny_models, body))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and text in err.details(), err.details()


def png_claiming(width: int, height: int) -> bytes:
    """A 57-byte PNG: a valid header claiming width x height, an empty image stream."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


def broken_stream() -> bytes:
    """A real 64x64 PNG with a valid header and 40 inverted bytes in its image data (PIL fails while decoding)."""
    good = to_png((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    return good[:100] + bytes(255 - b for b in good[100:140]) + good[140:]


def jpeg(arr: np.ndarray) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(image=b"not a png"), "`image` is not a readable PNG (9 bytes: not an image PIL can identify)"),
        (dict(image=png_claiming(20000, 20000)), "`image` is not a readable PNG (57 bytes"),  # a decompression bomb
        (dict(image=png_claiming(4000, 3000)), "`image` is 4000x3000; at most 1024 pixels per side (read from its "
                                               "header, nothing decoded)"),
        (dict(mask=png_claiming(4000, 3000)), "`mask` is 4000x3000; at most 64 pixels per side"),
        (dict(image=broken_stream()), "broken data stream when reading image file)"),
        (dict(mask=jpeg(np.zeros((64, 64), np.uint8))), "`mask` is not a readable PNG"),  # PNG, like the image
        (dict(image=b""), "`image` is empty"),
        (dict(mask=mask_to_png(np.zeros((64, 64), np.uint8))), "`mask` covers nothing"),
        (dict(mask=mask_to_png(np.ones((64, 64), np.uint8))), "`mask` covers the whole image"),
        (dict(prompt=""), "`prompt` is empty"),
        (dict(prompt="a red circle " * 20), "`prompt` is 62 tokens; the text encoder takes 40"),
    ],
)
def test_editor_bad_input(settings, tiny_models, kwargs, text):
    async def body(ch):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await editor_pb2_grpc.EditorStub(ch).Inpaint(edit_request(**kwargs))
        return err.value

    err = run(with_service("editor", settings, tiny_models, body, record=False))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and text in err.details(), err.details()
    assert not re.search(r"0x[0-9a-f]{6,}", err.details())  # no heap address of PIL's objects


def test_editor_rejects_wrong_sizes_naming_them(settings, tiny_models):
    from io import BytesIO

    from PIL import Image

    def png(arr, mode):
        buf = BytesIO()
        Image.fromarray(arr, mode=mode).save(buf, format="PNG")
        return buf.getvalue()

    async def body(ch):
        stub = editor_pb2_grpc.EditorStub(ch)
        errs = []
        for kw in (dict(image=png(np.zeros((32, 48, 3), np.uint8), "RGB")),
                   dict(mask=png(np.zeros((32, 32), np.uint8), "L")),
                   dict(image=png(np.zeros((64, 64), np.uint8), "L"))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Inpaint(edit_request(**kw))
            errs.append(err.value.details())
        return errs

    errs = run(with_service("editor", settings, tiny_models, body, record=False))
    assert "`image` must be 64x64 for this model, got 48x32" in errs[0]
    assert "`mask` must be 64x64 like the image, got 32x32" in errs[1]
    assert "`image` must be RGB, got mode L" in errs[2]


def test_prometheus_metrics_count_requests_and_batches(settings, tiny_models):
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = sample("editloop_requests_total", service="editloop.v1.Generator", method="Generate", code="OK")
    bad_before = sample("editloop_requests_total", service="editloop.v1.Generator", method="Generate",
                        code="INVALID_ARGUMENT")

    async def body(ch):
        stub = generator_pb2_grpc.GeneratorStub(ch)
        await stub.Generate(gen_request(n=1))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Generate(gen_request(prompt=""))

    run(with_service("generator", settings, tiny_models, body, record=False))
    assert sample("editloop_requests_total", service="editloop.v1.Generator", method="Generate",
                  code="OK") == before + 1
    assert sample("editloop_requests_total", service="editloop.v1.Generator", method="Generate",
                  code="INVALID_ARGUMENT") == bad_before + 1
    assert sample("editloop_batch_size_count", batcher="generator") >= 1


def test_sigterm_finishes_in_flight_requests_then_exits(tmp_path, tiny_models):
    import os
    import signal
    import subprocess
    import sys
    import threading

    env = {**os.environ, "EDITLOOP_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "editloop.cli.main", "serve", "generator", "--model",
                             str(tiny_models / "t2i")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        address = None
        for line in proc.stdout:
            if line.startswith("READY"):
                address = line.split()[-1]
                break
        assert address, "server did not start"
        result = {}

        def call():
            with grpc.insecure_channel(address) as ch:
                result["r"] = generator_pb2_grpc.GeneratorStub(ch).Generate(gen_request(n=1, steps=30), timeout=120)

        t = threading.Thread(target=call)
        t.start()
        import time

        time.sleep(1.0)  # the request is sampling now
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=120)
        assert len(result["r"].images) == 1  # the in-flight request completed during the grace period
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_server_reflection_lists_the_services(settings, tiny_models):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def body(ch):
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request])):
            return sorted(s.name for s in response.list_services_response.service)

    names = run(with_service("generator", settings, tiny_models, body, record=False))
    assert names == ["editloop.v1.Generator", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                     "grpc.reflection.v1alpha.ServerReflection"]

    async def v1(ch):  # what grpcurl and current clients ask: the v1 service (its messages are v1alpha's on the wire)
        call = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        async for response in call(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=
                                                                                 "editloop.v1.Generator")])):
            return response.file_descriptor_response.file_descriptor_proto

    files = run(with_service("generator", settings, tiny_models, v1, record=False))
    assert files and any(b"editloop/v1/generator.proto" in f for f in files)


def test_sigterm_turns_health_not_serving_for_the_drain_before_the_port_closes(tmp_path, tiny_models):
    import os
    import signal
    import subprocess
    import sys
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    env = {**os.environ, "EDITLOOP_STATE_DIR": str(tmp_path / "state"), "EDITLOOP_DRAIN_S": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "editloop.cli.main", "serve", "generator", "--model",
                             str(tiny_models / "t2i")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        address = next((line.split()[-1] for line in proc.stdout if line.startswith("READY")), None)
        assert address, "server did not start"
        seen = []
        with grpc.insecure_channel(address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            seen.append(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 2.5  # inside the drain: the port is open and says NOT_SERVING
            while time.monotonic() < deadline:
                seen.append(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
                time.sleep(0.2)
        assert seen[0] == health_pb2.HealthCheckResponse.SERVING
        assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_edit_hot_reloads_a_newly_promoted_instruction_editor_without_failing_requests(tmp_path, tiny_models,
                                                                                     tiny_instruct):
    """Editor.Edit serves the committed default, then the promoted instruct version once the registry has one;
    requests keep flowing through the swap and each names the version that produced it."""
    from editloop.registry import promote, register_candidate, store_model_dir
    from editloop.state import open_state

    settings = Settings(state_dir=tmp_path / "state", instruct_model=tiny_instruct["causal"], reload_interval_s=0.2)
    sessions, store = open_state(settings)

    async def body(ch):
        stub = editor_pb2_grpc.EditorStub(ch)
        versions, errors = [], 0
        for i in range(200):
            try:
                versions.append((await stub.Edit(instruct_request(n=1, steps=1))).model)
            except grpc.aio.AioRpcError:
                errors += 1
            if i == 2:
                with sessions.begin() as s:
                    register_candidate(s, "instruct", "instruct", "tiny-concat",
                                       store_model_dir(store, tiny_instruct["concat"]), {"eval_score": 0.5}, {}, None)
                    promote(s, "instruct", "tiny-concat")
            if versions[-1].version == "tiny-concat" and i > 4:
                break
        return versions, errors

    versions, errors = run(with_service("editor", settings, tiny_models, body))
    assert errors == 0
    assert (versions[0].name, versions[0].version) == ("default-instruct", "tiny-causal")
    assert (versions[-1].name, versions[-1].version) == ("instruct", "tiny-concat")
