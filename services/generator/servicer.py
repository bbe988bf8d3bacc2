"""Generator servicer: messages <-> core jobs, through the dynamic batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from services.core.batching import DynamicBatcher
from services.core.model_dir import check_model_ref
from services.core.recorder import Recorder
from services.core.results import result_message
from services.core.rpc import stream, unary
from services.core.sampling import check_count, check_prompt, resolve_sampling
from services.gen.editloop.v1 import generator_pb2, generator_pb2_grpc
from services.generator.core import GenerateJob, GeneratorCore

SERVICE = "editloop.v1.Generator"


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, core: GeneratorCore, batcher: DynamicBatcher, recorder: Recorder | None = None) -> None:
        self.core = core
        self.batcher = batcher
        self.recorder = recorder

    def _job(self, request: generator_pb2.GenerateRequest) -> GenerateJob:
        p = request.params
        check_model_ref(request.model.name, request.model.version, self.core.name, self.core.version)
        return GenerateJob(
            prompt=check_prompt(request.prompt, tokens=self.core.tokens),
            num_images=check_count(request.num_images),
            sampling=resolve_sampling(p.steps, p.guidance, p.seed, p.scheduler, self.core.defaults),
        )

    async def _respond(self, job: GenerateJob, images, record: bool) -> generator_pb2.GenerateResponse:
        return await result_message(generator_pb2.GenerateResponse, images, self.core.name, self.core.version,
                                    job.sampling, recorder=self.recorder, record=record, kind="t2i",
                                    prompt=job.prompt)

    @unary(SERVICE)
    async def Generate(self, request, context: grpc.aio.ServicerContext):
        job = self._job(request)
        images = await self.batcher.submit(job, job.sampling.batch_key, job.num_images)
        return await self._respond(job, images, request.record)

    @stream(SERVICE)
    async def GenerateStream(self, request, context: grpc.aio.ServicerContext) -> AsyncIterator:
        job = self._job(request)
        progress: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(self.batcher.submit(job, job.sampling.batch_key, job.num_images, progress))
        try:
            while not task.done():
                getter = asyncio.ensure_future(progress.get())
                await asyncio.wait([task, getter], return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    step, total = getter.result()
                    yield generator_pb2.GenerateEvent(progress=generator_pb2.Progress(step=step, total=total))
                else:
                    getter.cancel()
            images = task.result()
        finally:
            if not task.done():
                task.cancel()
        yield generator_pb2.GenerateEvent(result=await self._respond(job, images, request.record))
