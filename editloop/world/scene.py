"""Scenes: validation, JSON interchange, captions and seeded sampling (WORLD.md "Scenes")."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from editloop.world.palette import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("color", self.color, COLORS)
        _check_choice("size", self.size, SIZES)
        _check_choice("position", self.position, POSITIONS)

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_choice("background", self.background, BACKGROUNDS)
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= 3:
            raise ValueError(f"`objects` must hold 1 to 3 objects, got {len(self.objects)}")
        seen_cells: set[str] = set()
        seen_kinds: set[tuple[str, str]] = set()
        for obj in self.objects:
            if obj.position in seen_cells:
                raise ValueError(f"`position` {obj.position!r} holds two objects; one object per cell")
            if (obj.color, obj.shape) in seen_kinds:
                raise ValueError(
                    f"`color`+`shape` {obj.color} {obj.shape!r} appears twice; each must be unique in a scene"
                )
            seen_cells.add(obj.position)
            seen_kinds.add((obj.color, obj.shape))

    # -- interchange -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        if not isinstance(data, dict):
            raise ValueError(f"scene must be a JSON object, got {type(data).__name__}")
        if "background" not in data:
            raise ValueError("scene is missing `background`")
        raw_objects = data.get("objects")
        if not isinstance(raw_objects, list):
            raise ValueError(f"`objects` must be a list, got {raw_objects!r}")
        objects = []
        for i, raw in enumerate(raw_objects):
            if not isinstance(raw, dict):
                raise ValueError(f"`objects[{i}]` must be an object, got {raw!r}")
            missing = [k for k in ("shape", "color", "size", "position") if k not in raw]
            if missing:
                raise ValueError(f"`objects[{i}]` is missing {', '.join(missing)}")
            objects.append(SceneObject(raw["shape"], raw["color"], raw["size"], raw["position"]))
        return cls(data["background"], tuple(objects))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"scene is not valid JSON: {exc.msg} at position {exc.pos}") from None
        return cls.from_dict(data)

    # -- language ----------------------------------------------------------------------
    @property
    def caption(self) -> str:
        return caption(self)

    def find(self, color: str, shape: str) -> int | None:
        for i, obj in enumerate(self.objects):
            if obj.color == color and obj.shape == shape:
                return i
        return None


def caption(scene: Scene) -> str:
    """"a {size} {color} {shape} at the {position}", joined by ", " and " and "."""
    phrases = [o.phrase for o in scene.objects]
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{body} on a {scene.background} background"


_PHRASE = re.compile(r"a (\w+) (\w+) (\w+) at the "
                     r"(top left|top right|bottom left|bottom right|top|bottom|left|right|center)")
_SUFFIX = re.compile(r" on a (\w+) background$")


def parse_caption(text: str) -> Scene:
    """The scene a caption describes (the inverse of `caption`); ValueError naming what does not parse."""
    suffix = _SUFFIX.search(text)
    if suffix is None:
        raise ValueError(f"caption must end with ' on a <background> background', got {text!r}")
    body = text[: suffix.start()]
    phrases = [m.groups() for m in _PHRASE.finditer(body)]
    if not phrases:
        raise ValueError(f"caption names no object: {text!r}")
    scene = Scene(suffix.group(1), tuple(SceneObject(shape, color, size, position)
                                         for size, color, shape, position in phrases))
    if scene.caption != text:
        raise ValueError(f"not a Shapes World caption: {text!r}")
    return scene


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A uniformly drawn valid scene: background, 1-3 objects in distinct cells, unique kinds."""
    if n_objects is None:
        n_objects = int(rng.integers(1, 4))
    if not 1 <= n_objects <= 3:
        raise ValueError(f"`n_objects` must be 1 to 3, got {n_objects}")
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    cells = rng.choice(len(POSITIONS), size=n_objects, replace=False)
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    picked = rng.choice(len(kinds), size=n_objects, replace=False)
    objects = []
    for cell, kind in zip(cells, picked):
        color, shape = kinds[int(kind)]
        size = list(SIZES)[rng.integers(len(SIZES))]
        objects.append(SceneObject(shape, color, size, list(POSITIONS)[int(cell)]))
    return Scene(background, tuple(objects))


def _check_choice(name: str, value: object, allowed: Any) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {sorted(allowed)}, got {value!r}")
