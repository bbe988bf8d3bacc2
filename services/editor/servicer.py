"""Editor servicer: Inpaint, Outpaint and Erase on the inpainting editor; Edit (instruction editing) on the
instruction editor (SeedEdit), each through its own dynamic batcher and its own hot-reloaded holder: every
response names the model version that produced it."""

from __future__ import annotations

import asyncio

import grpc

from services.core.batching import DynamicBatcher
from services.core.convert import decode_image, decode_mask
from services.core.errors import FailedPrecondition
from services.core.model_dir import check_model_ref
from services.core.recorder import Recorder
from services.core.reload import Holder
from services.core.results import result_message
from services.core.rpc import unary
from services.core.sampling import check_count, check_prompt, resolve_sampling
from services.editor.core import EditorCore, InpaintJob
from services.editor.instruct import EditJob, InstructCore
from services.gen.editloop.v1 import editor_pb2, editor_pb2_grpc

SERVICE = "editloop.v1.Editor"


class EditorServicer(editor_pb2_grpc.EditorServicer):
    def __init__(self, editors: Holder, batcher: DynamicBatcher, recorder: Recorder | None = None,
                 instructs: Holder | None = None, instruct_batcher: DynamicBatcher | None = None) -> None:
        self.editors = editors  # holds the EditorCore
        self.batcher = batcher
        self.recorder = recorder
        self.instructs = instructs  # holds the InstructCore (None inside: no instruction editor yet)
        self.instruct_batcher = instruct_batcher

    def _job(self, request: editor_pb2.InpaintRequest, prompt_required: bool) -> InpaintJob:
        core: EditorCore = self.editors.core
        check_model_ref(request.model.name, request.model.version, core.name, core.version)
        p = request.params  # the cheap checks first, then the images
        prompt = check_prompt(request.prompt, required=prompt_required, tokens=core.tokens)
        num_images = check_count(request.num_images)
        sampling = resolve_sampling(p.steps, p.guidance, p.seed, p.scheduler, core.defaults)
        image = decode_image(request.image.png, "image")
        core.check_image(image)
        mask = decode_mask(request.mask.png, "mask", image)
        core.check_mask(mask)
        return InpaintJob(image=image, mask=mask, prompt=prompt, num_images=num_images, sampling=sampling)

    async def _edit(self, kind: str, request: editor_pb2.InpaintRequest, prompt_required: bool):
        job = await asyncio.to_thread(self._job, request, prompt_required)  # decoding off the event loop
        key = (*job.sampling.batch_key, job.image.shape)
        images, name, version = await self.batcher.submit(job, key, job.num_images)
        return await result_message(editor_pb2.EditResponse, images, name, version, job.sampling,
                                    recorder=self.recorder, record=request.record, kind=kind, prompt=job.prompt,
                                    source_png=request.image.png, mask_png=request.mask.png)

    @unary(SERVICE)
    async def Inpaint(self, request, context: grpc.aio.ServicerContext):
        return await self._edit("inpaint", request, prompt_required=True)

    @unary(SERVICE)
    async def Outpaint(self, request, context: grpc.aio.ServicerContext):
        return await self._edit("outpaint", request, prompt_required=True)

    @unary(SERVICE)
    async def Erase(self, request, context: grpc.aio.ServicerContext):
        return await self._edit("erase", request, prompt_required=False)

    def _edit_job(self, request: editor_pb2.EditRequest) -> EditJob:
        core: InstructCore | None = self.instructs.core if self.instructs is not None else None
        if core is None or self.instruct_batcher is None:
            raise FailedPrecondition("this editor server has no instruction editor: train one with "
                                     "`editloop train align` (or point EDITLOOP_INSTRUCT_MODEL at an editor directory)")
        check_model_ref(request.model.name, request.model.version, core.name, core.version)
        image = decode_image(request.image.png, "image")
        core.check_image(image)
        instruction = core.instruction(request.instruction)
        p = request.params
        sampling, image_guidance = core.resolve(p.steps, p.guidance, p.seed, p.scheduler, request.image_guidance)
        return EditJob(image, instruction, check_count(request.num_images), sampling, image_guidance,
                       core.resolve_start(request.start))

    @unary(SERVICE)
    async def Edit(self, request, context: grpc.aio.ServicerContext):
        job = await asyncio.to_thread(self._edit_job, request)  # decoding and grammar matching off the event loop
        images, name, version = await self.instruct_batcher.submit(job, job.batch_key, job.num_images)
        response = await result_message(editor_pb2.EditResponse, images, name, version, job.sampling,
                                        recorder=self.recorder, record=request.record, kind="edit",
                                        prompt=job.instruction, source_png=request.image.png)
        response.start = job.start
        return response
