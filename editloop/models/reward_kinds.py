"""The reward kinds, looked up by name: what the kernel, the services and the CLI need to know of a kind.

A kind belongs to a model family: `preference` (a PreferenceReward: one score per image for a prompt, and for an
edit its source and mask; Bradley-Terry trained) or `coherence` (a CoherenceReward: a per-pixel real/fake map,
the adversarial stage's critic). How a kind is trained and evaluated (its data, loss, held-out score and chance
floor) lives with its trainer (trainers/reward/kinds.py, one file per kind). A new kind registers here from its
own file (`register(RewardKind(...))`); the CLI's choices, the stack's services and the registry's kinds follow.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("preference", "coherence")


@dataclass(frozen=True)
class RewardKind:
    name: str
    family: str
    stem: str = "patch"  # a new tiny preference model's image stem (editloop.models.reward.DEFAULT_STEMS)
    summary: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"`family` of reward kind {self.name!r} must be one of {list(FAMILIES)}, "
                             f"got {self.family!r}")
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"a reward kind's name must be a lower-case identifier, got {self.name!r}")

    @property
    def text_conditioned(self) -> bool:
        return self.family == "preference"


_KINDS: dict[str, RewardKind] = {}


def register(kind: RewardKind) -> RewardKind:
    """Add `kind` (the same definition twice is a no-op; another one under a taken name is refused)."""
    known = _KINDS.get(kind.name)
    if known is not None and known != kind:
        raise ValueError(f"reward kind {kind.name!r} is already registered as {known}")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Forget kind `name` (a test's toy kind, after the test)."""
    _KINDS.pop(name, None)


def reward_kind(name: str) -> RewardKind:
    """The kind named `name`; a ValueError naming the known kinds otherwise."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"`kind` must be one of {list(_KINDS)}, got {name!r}") from None


def kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def preference_names() -> tuple[str, ...]:
    return tuple(k.name for k in _KINDS.values() if k.family == "preference")


def is_coherence(name: str) -> bool:
    return reward_kind(name).family == "coherence"


register(RewardKind("aesthetic", "preference", "conv", "how good an image looks to the annotators (best/worst labels)"))
register(RewardKind("alignment", "preference", "patch", "how well an image matches its prompt or instruction"))
register(RewardKind("coherence", "coherence", summary="per pixel: real, or inpainted (the adversarial critic)"))
