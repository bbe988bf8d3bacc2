"""Reward servicer: Score (batched), ScoreMap (coherence only), ModelInfo."""

from __future__ import annotations

import asyncio
import json

import grpc

from editloop.models.model_dir import public_config
from services.core.batching import DynamicBatcher
from services.core.convert import decode_image, decode_mask
from services.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.core.rpc import unary
from services.core.sampling import check_prompt
from services.gen.editloop.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.reward.core import RewardCore, ScoreItem
from services.reward.reload import CoreHolder

SERVICE = "editloop.v1.Reward"
MAX_ITEMS = 256


class RewardServicer(reward_pb2_grpc.RewardServicer):
    def __init__(self, holder: CoreHolder, batcher: DynamicBatcher, max_side: int = 256,
                 max_request_pixels: int = 1_048_576) -> None:
        self.holder = holder
        self.batcher = batcher
        self.max_side, self.max_request_pixels = max_side, max_request_pixels

    def _check_size(self, core: RewardCore, image, field: str) -> None:
        """What this model can take, before any model work: its own side, or at most `max_side`."""
        h, w = image.shape[:2]
        side = core.input_side()
        if side is not None and (h, w) != (side, side):
            raise InvalidArgument(f"`{field}` must be {side}x{side} for this {core.kind} model "
                                  f"({core.version}), got {w}x{h}")
        if side is None and max(h, w) > self.max_side:
            raise InvalidArgument(f"`{field}` is {w}x{h}; the {core.kind} model takes at most {self.max_side} "
                                  f"pixels per side (EDITLOOP_REWARD_MAX_SIDE)")

    @property
    def core(self) -> RewardCore:
        return self.holder.core  # hot-reloaded: read it once per use

    def _item(self, msg: reward_pb2.ScoreItem, field: str) -> ScoreItem:
        core = self.core
        prompt = check_prompt(msg.prompt, f"{field}.prompt", required=core.text_conditioned,  # cheap: first
                              tokens=core.tokens)
        image = decode_image(msg.image.png, f"{field}.image")
        self._check_size(core, image, f"{field}.image")
        source = decode_image(msg.source.png, f"{field}.source") if msg.source.png else None
        if source is not None and source.shape != image.shape:
            raise InvalidArgument(f"`{field}.source` must be the size of `{field}.image`, "
                                  f"got {source.shape[1]}x{source.shape[0]} vs {image.shape[1]}x{image.shape[0]}")
        mask = decode_mask(msg.mask.png, f"{field}.mask", image) if msg.mask.png else None
        if mask is not None and source is None:
            raise InvalidArgument(f"`{field}.mask` needs `{field}.source`: a mask marks what was regenerated in "
                                  "the source")
        return ScoreItem(image, prompt, source, mask)

    def _items(self, messages) -> list[ScoreItem]:
        items, pixels = [], 0
        for i, m in enumerate(messages):
            items.append(self._item(m, f"items[{i}]"))
            pixels += items[-1].image.shape[0] * items[-1].image.shape[1]
            if pixels > self.max_request_pixels:
                raise ResourceExhausted(f"`items` hold over {self.max_request_pixels} pixels by items[{i}] "
                                        f"(EDITLOOP_REWARD_MAX_REQUEST_PIXELS); send fewer or smaller images per "
                                        f"request")
        return items

    @staticmethod
    def _ref(core: RewardCore, version: str | None = None) -> common_pb2.ModelRef:
        return common_pb2.ModelRef(name=core.name, version=version or core.version)

    @unary(SERVICE)
    async def Score(self, request, context: grpc.aio.ServicerContext):
        if not 1 <= len(request.items) <= MAX_ITEMS:
            raise InvalidArgument(f"`items` must hold 1..{MAX_ITEMS} items, got {len(request.items)}")
        items = await asyncio.to_thread(self._items, request.items)  # decoding off the event loop
        shape = items[0].image.shape
        for i, it in enumerate(items):
            if it.image.shape != shape:
                raise InvalidArgument(f"`items[{i}].image` is {it.image.shape[1]}x{it.image.shape[0]}; "
                                      f"every item of a request must match items[0] ({shape[1]}x{shape[0]})")
        pinned = request.model.version
        self._check_pinned(pinned, self.core.version)  # cheap: before any model work
        scores, version = await self.batcher.submit(items, shape, len(items))
        self._check_pinned(pinned, version)  # a reload may have come between the check and the batch
        return reward_pb2.ScoreResponse(scores=[float(s) for s in scores], model=self._ref(self.core, version))

    def _check_pinned(self, pinned: str, served: str) -> None:
        if pinned and pinned != served:
            raise FailedPrecondition(f"`model.version` pins {self.core.kind} version {pinned!r}; this server "
                                     f"scores with {served!r}")

    @unary(SERVICE)
    async def ScoreMap(self, request, context: grpc.aio.ServicerContext):
        core = self.core
        if core.text_conditioned:
            raise FailedPrecondition(
                f"ScoreMap is served by the coherence model only; this server hosts {core.kind}"
            )
        item = await asyncio.to_thread(self._item, request.item, "item")
        pixel_map, score = await asyncio.to_thread(core.score_map, item.image)
        return reward_pb2.ScoreMapResponse(map_png=encode_gray(pixel_map), score=score, model=self._ref(core))

    @unary(SERVICE)
    async def ModelInfo(self, request, context: grpc.aio.ServicerContext):
        core = self.core
        return reward_pb2.ModelInfoResponse(kind=core.kind, model=self._ref(core),
                                            config_json=json.dumps(public_config(core.model.config)))


def encode_gray(pixel_map) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(pixel_map, mode="L").save(buf, format="PNG")
    return buf.getvalue()
