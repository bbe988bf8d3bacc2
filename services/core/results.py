"""Build a generation or edit response, recording it first when asked (shared by the servicers)."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.core.convert import encode_image
from services.core.recorder import Recorder
from services.core.sampling import Sampling
from services.gen.editloop.v1 import common_pb2


async def result_message(
    response_cls: type, images: list[np.ndarray], name: str, version: str, s: Sampling, *,
    recorder: Recorder | None, record: bool, kind: str, prompt: str,
    source_png: bytes | None = None, mask_png: bytes | None = None,
) -> Any:
    """`response_cls(images, model, params[, generation_id])`; blob keys filled in when recorded."""
    pngs = [encode_image(im) for im in images]
    response = response_cls(
        images=[common_pb2.Image(png=p) for p in pngs],
        model=common_pb2.ModelRef(name=name, version=version),
        params=common_pb2.SamplingParams(steps=s.steps, guidance=s.guidance, seed=s.seed, scheduler=s.scheduler),
    )
    if record and recorder is not None:
        gen_id, keys = await recorder.record(kind, prompt, pngs, images[0].shape[:2], name, version, s,
                                             source_png, mask_png)
        response.generation_id = gen_id
        for msg, key in zip(response.images, keys):
            msg.blob_key = key
    return response
