"""Read a Label Studio annotation's `result` list: best/worst positions or a side-by-side verdict.

Anything unexpected (a config edited by hand, a missing answer, a value that names no image)
becomes an `InvalidLabel` with a reason; the caller stores it, it is never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class InvalidLabel(ValueError):
    """The annotation cannot be used as a label; the message is the stored reason."""


@dataclass(frozen=True)
class BestWorst:
    best: int  # 1-based positions in the candidate set
    worst: int


def _choices(result: Any) -> dict[str, list[str]]:
    if not isinstance(result, list):
        raise InvalidLabel(f"malformed result: expected a list, got {type(result).__name__}")
    found: dict[str, list[str]] = {}
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise InvalidLabel(f"malformed result item: {str(item)[:120]}")
        name = item.get("from_name")
        choices = item["value"].get("choices")
        if not isinstance(name, str) or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            continue  # another control (a hand-edited config may add one): not ours to read
        found[name] = choices
    return found


def _single(found: dict[str, list[str]], name: str) -> str:
    if name not in found or not found[name]:
        raise InvalidLabel(f"missing answer: {name}")
    if len(found[name]) != 1:
        raise InvalidLabel(f"{name} must be one choice, got {found[name]}")
    return found[name][0]


def parse_best_worst(result: Any, n: int, was_cancelled: bool = False) -> BestWorst:
    """Positions of the best and worst image in a set of `n`; raises InvalidLabel with the reason."""
    if was_cancelled:
        raise InvalidLabel("skipped by the annotator")
    found = _choices(result)
    positions = []
    for name in ("best", "worst"):
        value = _single(found, name)
        if not value.isdigit() or not 1 <= int(value) <= n:
            raise InvalidLabel(f"unknown image: {name} = {value!r} (the set has {n} images)")
        positions.append(int(value))
    best, worst = positions
    if best == worst:
        raise InvalidLabel(f"best equals worst (image {best})")
    return BestWorst(best, worst)


SIDE_TO_VERDICT = {"Left": "good", "Same": "same", "Right": "bad"}  # when A is shown on the left


def parse_side_by_side(result: Any, swapped: bool, was_cancelled: bool = False) -> str:
    """The verdict from A's side ("good" | "same" | "bad"); `swapped` means A was shown on the right."""
    if was_cancelled:
        raise InvalidLabel("skipped by the annotator")
    value = _single(_choices(result), "verdict")
    if value not in SIDE_TO_VERDICT:
        raise InvalidLabel(f"unknown verdict {value!r} (expected one of {list(SIDE_TO_VERDICT)})")
    verdict = SIDE_TO_VERDICT[value]
    if swapped and verdict != "same":
        verdict = "bad" if verdict == "good" else "good"
    return verdict
