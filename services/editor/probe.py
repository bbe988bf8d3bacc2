"""Which editor version a running editor service serves: a small real Inpaint call, read from its response."""

from __future__ import annotations

import grpc
import numpy as np


def world_inputs(seed: int = 0):
    """(scene, Image, Mask): a two-object world scene rendered as a request's image, and a mask over its first
    object (the inputs of a small valid Inpaint, Erase or Score request)."""
    from editloop.world import cell_mask, render, sample_scene
    from editloop.world.io import mask_to_png, to_png
    from services.gen.editloop.v1 import common_pb2

    scene = sample_scene(np.random.default_rng(seed), 2)
    return (scene, common_pb2.Image(png=to_png(render(scene))),
            common_pb2.Mask(png=mask_to_png(cell_mask(scene.objects[0].position))))


def served_version(address: str, timeout: float = 120) -> str:
    """The version the editor service at `address` names in an Inpaint response (2 steps on a world scene)."""
    from services.gen.editloop.v1 import common_pb2, editor_pb2, editor_pb2_grpc

    scene, image, mask = world_inputs()
    request = editor_pb2.InpaintRequest(image=image, mask=mask, prompt=scene.caption,
                                        params=common_pb2.SamplingParams(steps=2, seed=1))
    with grpc.insecure_channel(address) as ch:
        return editor_pb2_grpc.EditorStub(ch).Inpaint(request, timeout=timeout).model.version
