"""Per-image text guidance for a candidate set: each image of a set sampled at its own guidance.

An annotator's choice between near-twins says little: on the base editor's own sets of four edits at one guidance,
the simulated panel's best lies above its worst on 0.65 of sets; with the four at guidances 1.0, 2.5, 4.0, 7.0, on
0.77 (BENCHMARKS.md, "A turn of the loop with nobody typing"; bench/experiments/label_signal.py). A list is cycled
over the set's images; the sampler runs once per distinct value, each image keeping its own seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

MAX_SET_GUIDANCE = 10.0  # the instruction editors' limit (editloop.models.instruct_sampling), for every kind


def check_guidances(values: Sequence[float] | None, name: str) -> None:
    """A per-image guidance list: None, or 1..16 numbers in [0, MAX_SET_GUIDANCE]; ValueError naming `name`."""
    if values is None:
        return
    if not 1 <= len(values) <= 16:
        raise ValueError(f"`{name}` takes 1..16 values (one per image, cycled), got {len(values)}")
    for value in values:
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= MAX_SET_GUIDANCE:
            raise ValueError(f"`{name}` values must be numbers in [0, {MAX_SET_GUIDANCE}], got {value!r}")


def parse_guidances(text: str, name: str) -> tuple[float, ...] | None:
    """"1.0,2.5,4.0,7.0" -> per-image guidances ("" -> None: one guidance for the set); ValueError naming `name`."""
    if not text.strip():
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"`{name}` must be comma-separated numbers (e.g. 1.0,2.5,4.0,7.0), got {text!r}") from None
    check_guidances(values, name)
    return values


def guidance_groups(guidances: list[float]) -> list[tuple[float, list[int]]]:
    """(guidance, the indices of the images at it) per distinct guidance: one sampler call each."""
    return [(g, [i for i, x in enumerate(guidances) if x == g]) for g in sorted(set(guidances))]


def by_guidance(guidances: list[float], make: Callable[[float, list[int]], Sequence[T]]) -> list[T]:
    """Every image in set order, made by `make(guidance, indices)` once per distinct guidance (the images at those
    indices, in that order)."""
    out: list[T | None] = [None] * len(guidances)
    for guidance, idx in guidance_groups(guidances):
        for i, image in zip(idx, make(guidance, idx), strict=True):
            out[i] = image
    return out  # type: ignore[return-value]  # every index is in one group
