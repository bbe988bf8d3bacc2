"""Editor servicer: Inpaint, Outpaint and Erase through the batcher; Edit is UNIMPLEMENTED
until the SeedEdit issue lands."""

from __future__ import annotations

import grpc

from services.core.batching import DynamicBatcher
from services.core.convert import decode_image, decode_mask
from services.core.model_dir import check_model_ref
from services.core.recorder import Recorder
from services.core.results import result_message
from services.core.rpc import unary
from services.core.sampling import check_count, check_prompt, resolve_sampling
from services.editor.core import EditorCore, InpaintJob
from services.gen.editloop.v1 import editor_pb2, editor_pb2_grpc

SERVICE = "editloop.v1.Editor"


class EditorServicer(editor_pb2_grpc.EditorServicer):
    def __init__(self, core: EditorCore, batcher: DynamicBatcher, recorder: Recorder | None = None) -> None:
        self.core = core
        self.batcher = batcher
        self.recorder = recorder

    def _job(self, request: editor_pb2.InpaintRequest, prompt_required: bool) -> InpaintJob:
        check_model_ref(request.model.name, request.model.version, self.core.name, self.core.version)
        image = decode_image(request.image.png, "image")
        self.core.check_image(image)
        mask = decode_mask(request.mask.png, "mask", image)
        self.core.check_mask(mask)
        p = request.params
        return InpaintJob(
            image=image, mask=mask, prompt=check_prompt(request.prompt, required=prompt_required),
            num_images=check_count(request.num_images),
            sampling=resolve_sampling(p.steps, p.guidance, p.seed, p.scheduler, self.core.defaults),
        )

    async def _edit(self, kind: str, request: editor_pb2.InpaintRequest, prompt_required: bool):
        job = self._job(request, prompt_required)
        key = (*job.sampling.batch_key, job.image.shape)
        images = await self.batcher.submit(job, key, job.num_images)
        return await result_message(editor_pb2.EditResponse, images, self.core.name, self.core.version, job.sampling,
                                    recorder=self.recorder, record=request.record, kind=kind, prompt=job.prompt,
                                    source_png=request.image.png, mask_png=request.mask.png)

    @unary(SERVICE)
    async def Inpaint(self, request, context: grpc.aio.ServicerContext):  # noqa: N802
        return await self._edit("inpaint", request, prompt_required=True)

    @unary(SERVICE)
    async def Outpaint(self, request, context: grpc.aio.ServicerContext):  # noqa: N802
        return await self._edit("outpaint", request, prompt_required=True)

    @unary(SERVICE)
    async def Erase(self, request, context: grpc.aio.ServicerContext):  # noqa: N802
        return await self._edit("erase", request, prompt_required=False)

    @unary(SERVICE)
    async def Edit(self, request, context: grpc.aio.ServicerContext):  # noqa: N802
        raise NotImplementedError(
            "Editor.Edit (instruction editing) is not implemented yet: it arrives with the SeedEdit causal editor"
        )
