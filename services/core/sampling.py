"""Sampling parameters: defaults, limits and validation shared by generator and editor cores."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

from editloop.models.card import SamplingDefaults
from editloop.models.zoo import SCHEDULERS
from editloop.quote import quoted
from services.core.errors import InvalidArgument

MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_IMAGES = 16
MAX_PROMPT = 1000


@dataclass(frozen=True)
class Sampling:
    steps: int
    guidance: float
    seed: int
    scheduler: str

    @property
    def batch_key(self) -> tuple[int, float, str]:
        return (self.steps, self.guidance, self.scheduler)


ModelDefaults = SamplingDefaults  # the services' name for the card's sampling defaults


def resolve_sampling(steps: int, guidance: float, seed: int, scheduler: str, defaults: ModelDefaults) -> Sampling:
    steps = steps or defaults.steps
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidArgument(f"`params.steps` must be in 1..{MAX_STEPS}, got {steps}")
    guidance = guidance or defaults.guidance
    if not 0 < guidance <= MAX_GUIDANCE or guidance != guidance:
        raise InvalidArgument(f"`params.guidance` must be in (0, {MAX_GUIDANCE}], got {guidance}")
    scheduler = scheduler or defaults.scheduler
    if scheduler not in SCHEDULERS:
        raise InvalidArgument(f"`params.scheduler` must be one of {list(SCHEDULERS)}, got {quoted(scheduler)}")
    if not 0 <= seed < 2**63:
        raise InvalidArgument(f"`params.seed` must be in 0..2^63-1, got {seed}")
    return Sampling(steps, float(guidance), seed, scheduler)


def check_count(n: int, field: str = "num_images") -> int:
    n = n or 1
    if not 1 <= n <= MAX_IMAGES:
        raise InvalidArgument(f"`{field}` must be in 1..{MAX_IMAGES}, got {n}")
    return n


class TokenCounter:
    """Counts a prompt's tokens with its own copy of the model's tokenizer, one call at a time.

    A fast tokenizer keeps truncation and padding as state on one Rust object: a count on a request thread
    (truncation off) racing the batch worker's padded call (truncation on) left batches the tokenizer could not
    pad ("Unable to create tensor ..."), so the counter never touches the tokenizer the model's batches use."""

    def __init__(self, tokenizer) -> None:  # any transformers tokenizer
        self._tokenizer = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()
        self.limit = int(tokenizer.model_max_length)

    def __call__(self, text: str) -> int:
        with self._lock:
            return len(self._tokenizer(text, truncation=False, verbose=False).input_ids)


def check_prompt(prompt: str, field: str = "prompt", required: bool = True, tokens: TokenCounter | None = None) -> str:
    """The stripped prompt; refused when empty (if required), over MAX_PROMPT characters, or over the text
    encoder's length in `tokens` (the encoder would silently cut the rest)."""
    if required and not prompt.strip():
        raise InvalidArgument(f"`{field}` is empty; describe the image to generate")
    if len(prompt) > MAX_PROMPT:
        raise InvalidArgument(f"`{field}` is {len(prompt)} characters; the limit is {MAX_PROMPT}")
    prompt = prompt.strip()
    if tokens is not None and prompt:
        n = tokens(prompt)
        if n > tokens.limit:
            raise InvalidArgument(f"`{field}` is {n} tokens; the text encoder takes {tokens.limit} (start and end "
                                  f"included), and would cut the rest")
    return prompt
