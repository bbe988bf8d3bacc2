"""Reward scoring core: one reward model (aesthetic, alignment or coherence), batch in, scores out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editloop.models.data import edit_context, to_tensor
from editloop.models.model_dir import model_version
from editloop.models.reward import load_reward
from editloop.models.reward_kinds import reward_kind
from editloop.models.zoo import pick_device
from services.core.batching import split_per_job
from services.core.sampling import TokenCounter


@dataclass(frozen=True)
class ScoreItem:
    image: np.ndarray  # HxWx3 uint8
    prompt: str
    source: np.ndarray | None = None
    mask: np.ndarray | None = None  # HxW {0, 1}


CHUNK_PIXELS = 131_072  # pixels per forward pass: 32 items of 64x64, 2 of 256x256 (~150 MiB for coherence)


class RewardCore:
    def __init__(self, model_path: Path, kind: str | None = None, device: str | None = None) -> None:
        self.path = Path(model_path)
        self.kind, self.model, self.tokenizer = load_reward(self.path, kind)
        self.device = pick_device(device)
        self.model.to(self.device)
        self.name = self.kind
        self.version = model_version(self.path)
        self.text_conditioned = reward_kind(self.kind).text_conditioned
        self.tokens = TokenCounter(self.tokenizer) if self.text_conditioned else None  # prompt checks, any thread

    def input_side(self) -> int | None:
        """The one image side this model takes (a preference reward's own stem has position embeddings for its
        `image_size`), or None when any size works (coherence: fully convolutional; a CLIP backbone resizes)."""
        if not self.text_conditioned or getattr(self.model, "vision", None) is not None:
            return None
        return int(self.model.config.image_size)

    def score(self, items: list[ScoreItem]) -> np.ndarray:
        """Scores of `items`, in forward passes of at most CHUNK_PIXELS pixels (at least one item each): the
        memory a request adds stays bounded however many pixels it holds (the coherence model keeps full-size
        activations)."""
        chunks, current, pixels = [], [], 0
        for item in items:
            n = item.image.shape[0] * item.image.shape[1]
            if current and pixels + n > CHUNK_PIXELS:
                chunks.append(current)
                current, pixels = [], 0
            current.append(item)
            pixels += n
        chunks.append(current)
        return np.concatenate([self._score(c) for c in chunks])

    @torch.inference_mode()
    def _score(self, items: list[ScoreItem]) -> np.ndarray:
        images = to_tensor([i.image for i in items]).to(self.device)
        if not self.text_conditioned:
            return self.model.summary(self.model(images)).float().cpu().numpy()
        tok = self.tokenizer([i.prompt for i in items], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").to(self.device)
        source, mask = None, None
        if self.model.config.reads_source:  # a model trained without sources never sees one (as feedback learning)
            source, mask = edit_context([i.source for i in items], [i.mask for i in items], *images.shape[-2:])
        if source is not None:
            source, mask = source.to(self.device), mask.to(self.device)
        return self.model(images, tok.input_ids, tok.attention_mask, source, mask).float().cpu().numpy()

    def run(self, batches: list[list[ScoreItem]], on_step: Callable[[int, int], None]) -> list[np.ndarray]:
        """Score several requests in one forward pass; split the scores back per request."""
        return split_per_job(self.score([item for batch in batches for item in batch]), [len(b) for b in batches])

    @torch.inference_mode()
    def score_map(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-pixel probability that a pixel is generated (uint8, 255 = surely generated), and the score."""
        logits = self.model(to_tensor([image]).to(self.device))
        real = torch.sigmoid(logits)[0, 0].float().cpu().numpy()
        return np.round((1 - real) * 255).astype(np.uint8), float(real.mean())
