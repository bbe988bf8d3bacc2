"""The edit instruction grammar (the forms `editloop.world.edits` writes), checked with suggestions.

    make the <color> <shape> <color>            turn the <color> <shape> into a <shape>
    make the <color> <shape> larger|smaller     move the <color> <shape> to the <position>
    remove the <color> <shape>                  add a <size> <color> <shape> at the <position>
    change the background to <background>
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from editloop.quote import quoted
from editloop.world.palette import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES


@lru_cache(maxsize=1)
def valid_instructions() -> tuple[str, ...]:
    """Every instruction the grammar admits (669)."""
    out: list[str] = []
    for c in COLORS:
        for s in SHAPES:
            the = f"the {c} {s}"
            out += [f"make {the} {c2}" for c2 in COLORS if c2 != c]
            out += [f"turn {the} into a {s2}" for s2 in SHAPES if s2 != s]
            out += [f"make {the} larger", f"make {the} smaller", f"remove {the}"]
            out += [f"move {the} to the {p}" for p in POSITIONS]
            out += [f"add a {z} {c} {s} at the {p}" for z in SIZES for p in POSITIONS]
    out += [f"change the background to {b}" for b in BACKGROUNDS]
    return tuple(out)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower().rstrip("."))


def closest_instructions(text: str, n: int = 3) -> list[str]:
    return difflib.get_close_matches(normalise(text), valid_instructions(), n=n, cutoff=0.0)


MAX_INSTRUCTION = 200  # characters; the grammar's longest instruction is far shorter
def check_instruction(text: str, field: str = "instruction") -> str:
    """The instruction in normal form; ValueError naming the field, the value and the closest valid forms. Over
    MAX_INSTRUCTION characters is refused before any matching."""
    if len(text) > MAX_INSTRUCTION:
        raise ValueError(f"`{field}` is {len(text)} characters; the limit is {MAX_INSTRUCTION}")
    norm = normalise(text)
    if not norm:
        raise ValueError(f"`{field}` is empty; e.g. {valid_instructions()[0]!r}")
    if norm in set(valid_instructions()):
        return norm
    close = "; ".join(repr(c) for c in closest_instructions(norm))
    raise ValueError(f"`{field}` {quoted(text)} is not an instruction of the Shapes World grammar; closest valid "
                     f"forms: {close}")
