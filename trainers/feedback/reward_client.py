"""Scoring a policy's own samples with the reward models, for online RL (grpo.py): through the reward services over
gRPC, or in-process when no service runs. Both give the same numbers (the raw score a service's Score answers: the
Bradley-Terry score of a preference reward, the mean real-probability of the coherence map).

Through the services, per reward kind: one ScoreRequest per chunk of at most `batch` items (the service batches
further), each with a deadline (`timeout`); UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED and DEADLINE_EXCEEDED are tried
again with exponential back-off up to `retries` times. A chunk still past its deadline after that drops its samples
(NaN: they get no advantage, and the run counts them) rather than hanging the run; any other failure, or a service
that stays down, ends the run with RewardServiceError naming the kind, the address and the status: never a silent
zero reward. Every request pins the version the run was started with (ScoreRequest.model.version), so a version
promoted mid-run cannot change what the run learns from: the service answers FAILED_PRECONDITION and the run fails
with both versions named.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np
import torch

from editloop.models.data import edit_context, to_tensor
from editloop.models.reward_kinds import is_coherence
from editloop.settings import Settings
from trainers.feedback.rewards import RewardModels, preference_scores

RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
           grpc.StatusCode.DEADLINE_EXCEEDED)
SCORERS = ("auto", "services", "in-process")


class RewardServiceError(RuntimeError):
    """A reward service failed past the retry budget, or serves another version than the run pinned."""


@dataclass(frozen=True)
class ScoreBatch:
    images: np.ndarray  # N,H,W,3 uint8: the policy's samples
    prompts: list[str]
    sources: np.ndarray  # N,H,W,3 uint8: the images before editing
    masks: np.ndarray  # N,H,W {0, 1}: 1 = regenerated

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ClientPolicy:
    timeout: float = 30.0  # seconds per request
    retries: int = 3  # tries after the first, with back-off
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    batch: int = 64  # items per request (the service takes at most 256)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"`timeout` must be a number of seconds > 0, got {self.timeout}")
        if not 0 <= self.retries <= 20:
            raise ValueError(f"`retries` must be in 0..20, got {self.retries}")
        if not (math.isfinite(self.backoff) and 0 <= self.backoff <= 60):
            raise ValueError(f"`backoff` must be in [0, 60] seconds, got {self.backoff}")
        if not 1 <= self.batch <= 256:
            raise ValueError(f"`batch` must be in 1..256 (the service's limit per request), got {self.batch}")


class Scorer(Protocol):
    versions: dict[str, str]
    dropped: int

    def score(self, kind: str, batch: ScoreBatch) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class LocalScorer:
    """The reward models loaded in this process (the same versions the gate scores with)."""

    rewards: RewardModels
    dropped: int = 0
    versions: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.versions = dict(self.rewards.versions)

    @torch.no_grad()
    def score(self, kind: str, batch: ScoreBatch) -> np.ndarray:
        images = to_tensor(list(batch.images))
        if is_coherence(kind):
            model = self.rewards.coherence
            if model is None:
                raise ValueError("the coherence reward is weighted but not loaded")
            device = next(model.parameters()).device
            return model.summary(model(images.to(device))).float().cpu().numpy()
        source, mask = edit_context(list(batch.sources), list(batch.masks), *batch.images.shape[1:3])
        device = next(self.rewards.preference[kind][0].parameters()).device
        return preference_scores(self.rewards, kind, images.to(device), batch.prompts, source, mask
                                 ).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"via": "in-process", "versions": self.versions}

    def close(self) -> None:
        pass


class ServiceScorer:
    """The reward services at `addresses` (kind -> host:port), each pinned to `versions[kind]`."""

    def __init__(self, addresses: dict[str, str], versions: dict[str, str], settings: Settings,
                 policy: ClientPolicy | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        from services.core.channels import open_channel
        from services.gen.editloop.v1 import reward_pb2_grpc

        missing = sorted(set(addresses) - set(versions))
        if missing:
            raise ValueError(f"no pinned version for reward {missing[0]!r} (pinned: {sorted(versions)})")
        self.addresses, self.versions = dict(addresses), {k: versions[k] for k in addresses}
        self.policy, self.dropped, self.requests, self.retried = policy or ClientPolicy(), 0, 0, 0
        self._sleep = sleep
        self._channels = {k: open_channel(a, settings) for k, a in self.addresses.items()}
        self._stubs = {k: reward_pb2_grpc.RewardStub(ch) for k, ch in self._channels.items()}
        for kind in self.addresses:
            self._check_served(kind)

    def _call(self, kind: str, method: str, request: Any) -> Any:
        """One RPC with deadline and retries; RewardServiceError past the budget (DEADLINE_EXCEEDED re-raised as
        grpc.RpcError for the caller to drop the samples)."""
        for attempt in range(self.policy.retries + 1):
            self.requests += 1
            try:
                return getattr(self._stubs[kind], method)(request, timeout=self.policy.timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRIED or attempt == self.policy.retries:
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED and method == "Score":
                        raise
                    raise RewardServiceError(
                        f"reward service {kind} at {self.addresses[kind]}: {method} failed with {code.name}: "
                        f"{exc.details()} (after {attempt + 1} tries)") from None
                self.retried += 1
                self._sleep(self.policy.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _check_served(self, kind: str) -> None:
        from services.gen.editloop.v1 import reward_pb2

        info = self._call(kind, "ModelInfo", reward_pb2.ModelInfoRequest())
        if info.kind != kind:
            raise RewardServiceError(f"reward service at {self.addresses[kind]} serves {info.kind!r}, not {kind!r}")
        if info.model.version != self.versions[kind]:
            raise RewardServiceError(
                f"reward service {kind} at {self.addresses[kind]} serves version {info.model.version!r}; the run "
                f"pins {self.versions[kind]!r} (the promoted one): wait for the service to reload, or restart it")

    def score(self, kind: str, batch: ScoreBatch) -> np.ndarray:
        out = np.full(len(batch), np.nan, dtype=np.float64)
        for lo in range(0, len(batch), self.policy.batch):
            hi = min(lo + self.policy.batch, len(batch))
            try:
                out[lo:hi] = self._score_chunk(kind, batch, lo, hi)
            except grpc.RpcError:  # past its deadline on every try: these samples are dropped
                self.dropped += hi - lo
        return out

    def _score_chunk(self, kind: str, batch: ScoreBatch, lo: int, hi: int) -> list[float]:
        from editloop.world.io import mask_to_png, to_png
        from services.gen.editloop.v1 import common_pb2, reward_pb2

        preference = not is_coherence(kind)
        items = [reward_pb2.ScoreItem(
            image=common_pb2.Image(png=to_png(batch.images[i])), prompt=batch.prompts[i] if preference else "",
            **({"source": common_pb2.Image(png=to_png(batch.sources[i])),
                "mask": common_pb2.Mask(png=mask_to_png(batch.masks[i]))} if preference else {}))
            for i in range(lo, hi)]
        request = reward_pb2.ScoreRequest(items=items, model=common_pb2.ModelRef(version=self.versions[kind]))
        got = self._call(kind, "Score", request)
        if len(got.scores) != hi - lo:
            raise RewardServiceError(f"reward service {kind} at {self.addresses[kind]} answered "
                                     f"{len(got.scores)} scores for {hi - lo} items")
        return list(got.scores)

    def describe(self) -> dict[str, Any]:
        return {"via": "services", "addresses": self.addresses, "versions": self.versions,
                "requests": self.requests, "retried": self.retried, "dropped": self.dropped}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def stack_addresses(settings: Settings, kinds: list[str]) -> dict[str, str] | None:
    """The running stack's reward services of `kinds`, else those EDITLOOP_SERVICE_ADDRESSES names (services on other
    hosts), or None when neither has every one of them."""
    from editloop.cli.stack import configured_addresses, read_stack

    stack = read_stack(settings)
    parts = (stack or {}).get("parts", {})
    found = {k: parts.get(f"reward-{k}", {}).get("address") for k in kinds}
    if all(found.values()):
        return found
    configured = configured_addresses(settings)
    found = {k: configured.get(f"reward-{k}") for k in kinds}
    return found if all(found.values()) else None


def resolve_addresses(how: str, kinds: list[str], settings: Settings, addresses: dict[str, str] | None = None
                      ) -> dict[str, str] | None:
    """The reward services a run of scorer `how` scores through (kind -> host:port), or None for in-process: the
    given `addresses`, else the running stack's. "services" without either is refused (ValueError)."""
    if how not in SCORERS:
        raise ValueError(f"`scorer` must be one of {list(SCORERS)}, got {how!r}")
    if how == "in-process":
        return None
    found = {k: addresses[k] for k in kinds} if addresses and set(kinds) <= set(addresses) else None
    found = found or stack_addresses(settings, kinds)
    if how == "services" and found is None:
        raise ValueError(f"`scorer` is 'services' but no reward service address is known for every one of {kinds}: "
                         f"run the stack (`editloop up`) or give each address (--reward-address KIND=HOST:PORT)")
    return found


def make_scorer(how: str, rewards: RewardModels, kinds: list[str], settings: Settings,
                addresses: dict[str, str] | None = None, policy: ClientPolicy | None = None) -> Scorer:
    """`how`: "services" (the given `addresses`, else the running stack's; refused when neither names every kind),
    "in-process" (the loaded `rewards`), or "auto" (the services when they run, else in-process)."""
    found = resolve_addresses(how, kinds, settings, addresses)
    if found is None:
        return LocalScorer(rewards)
    return ServiceScorer(found, rewards.versions, settings, policy)
