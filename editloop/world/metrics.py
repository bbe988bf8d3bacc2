"""Metrics on judged scenes: caption/attribute accuracy, edit success and preservation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from editloop.world.judge import JudgedObject, JudgedScene
from editloop.world.scene import Scene, SceneObject

ATTRIBUTES = ("color", "shape", "size", "position")


@dataclass(frozen=True)
class Comparison:
    """Attribute-by-attribute agreement between a judged and an intended scene."""

    background: bool
    objects: tuple[dict[str, bool], ...]  # per intended object: present + the four attributes
    no_extra: bool

    @property
    def flags(self) -> list[bool]:
        out = [self.background, self.no_extra]
        for obj in self.objects:
            out.extend(obj[k] for k in ("present", *ATTRIBUTES))
        return out

    @property
    def all_correct(self) -> bool:
        return all(self.flags)

    @property
    def attribute_accuracy(self) -> float:
        return float(np.mean(self.flags))


def _agreement(intended: SceneObject, judged: JudgedObject) -> int:
    # colour and position identify an object best; shape and size break ties
    return (
        3 * (intended.color == judged.color)
        + 3 * (intended.position == judged.position)
        + (intended.shape == judged.shape)
        + (intended.size == judged.size)
    )


def match_objects(
    intended: tuple[SceneObject, ...], judged: tuple[JudgedObject, ...]
) -> list[JudgedObject | None]:
    """Greedy one-to-one matching by agreement; a match needs its colour or position right."""
    pairs = sorted(
        ((_agreement(o, j), i, k) for i, o in enumerate(intended) for k, j in enumerate(judged)),
        reverse=True,
    )
    matched: list[JudgedObject | None] = [None] * len(intended)
    used: set[int] = set()
    for score, i, k in pairs:
        if score < 3 or matched[i] is not None or k in used:
            continue
        matched[i] = judged[k]
        used.add(k)
    return matched


def compare(judged: JudgedScene, intended: Scene) -> Comparison:
    matched = match_objects(intended.objects, judged.objects)
    per_object = []
    for obj, hit in zip(intended.objects, matched):
        row = {"present": hit is not None}
        for attr in ATTRIBUTES:
            row[attr] = hit is not None and getattr(hit, attr) == getattr(obj, attr)
        per_object.append(row)
    n_matched = sum(m is not None for m in matched)
    return Comparison(
        background=judged.background == intended.background,
        objects=tuple(per_object),
        no_extra=len(judged.objects) == n_matched,
    )


def masked_l1(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference (0..1 scale) over pixels where `mask` is 0 (the kept region)."""
    keep = mask == 0
    if not keep.any():
        return 0.0
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return float(diff[keep].mean())
