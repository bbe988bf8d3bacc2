"""Edits: seven kinds, their instructions, target scenes and masks (WORLD.md "Edits")."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from editloop.world.judge import JudgedScene
from editloop.world.masks import cell_mask
from editloop.world.metrics import compare, match_objects
from editloop.world.palette import BACKGROUNDS, CANVAS, COLORS, POSITIONS, SHAPES, SIZES
from editloop.world.scene import Scene, SceneObject

EDIT_KINDS = ("recolor", "reshape", "resize", "move", "remove", "add", "background")


@dataclass(frozen=True)
class Edit:
    kind: str
    source: Scene
    target: Scene
    instruction: str
    mask: np.ndarray  # uint8 64x64, 1 = regenerate
    changed: SceneObject | None  # the object as it is in `target` (None for remove/background)
    removed: SceneObject | None = None  # the object taken away (remove) or its old form


def _free_cells(scene: Scene) -> list[str]:
    taken = {o.position for o in scene.objects}
    return [p for p in POSITIONS if p not in taken]


def _kind_free(scene: Scene, color: str, shape: str, skip: int | None = None) -> bool:
    return all((o.color, o.shape) != (color, shape) for i, o in enumerate(scene.objects) if i != skip)


def _with_object(scene: Scene, index: int, obj: SceneObject) -> Scene:
    objects = list(scene.objects)
    objects[index] = obj
    return Scene(scene.background, tuple(objects))


def make_edit(source: Scene, kind: str, rng: np.random.Generator) -> Edit:
    """A random valid edit of `kind` on `source`; ValueError if the scene admits none."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"`kind` must be one of {list(EDIT_KINDS)}, got {kind!r}")
    n = len(source.objects)
    i = int(rng.integers(n))
    obj = source.objects[i]
    the = f"the {obj.color} {obj.shape}"
    if kind == "recolor":
        options = [c for c in COLORS if c != obj.color and _kind_free(source, c, obj.shape, i)]
        new = replace(obj, color=options[rng.integers(len(options))])
        return Edit(kind, source, _with_object(source, i, new), f"make {the} {new.color}",
                    cell_mask(obj.position), new, obj)
    if kind == "reshape":
        options = [s for s in SHAPES if s != obj.shape and _kind_free(source, obj.color, s, i)]
        if not options:
            raise ValueError(f"no free shape to turn {the} into")
        new = replace(obj, shape=options[rng.integers(len(options))])
        return Edit(kind, source, _with_object(source, i, new), f"turn {the} into a {new.shape}",
                    cell_mask(obj.position), new, obj)
    if kind == "resize":
        bigger = obj.size == "small"
        new = replace(obj, size="large" if bigger else "small")
        word = "larger" if bigger else "smaller"
        return Edit(kind, source, _with_object(source, i, new), f"make {the} {word}",
                    cell_mask(obj.position), new, obj)
    if kind == "move":
        free = _free_cells(source)
        new = replace(obj, position=free[rng.integers(len(free))])
        return Edit(kind, source, _with_object(source, i, new), f"move {the} to the {new.position}",
                    cell_mask(obj.position, new.position), new, obj)
    if kind == "remove":
        if n < 2:
            raise ValueError("`remove` needs a scene with at least 2 objects (a scene keeps one)")
        objects = tuple(o for k, o in enumerate(source.objects) if k != i)
        return Edit(kind, source, Scene(source.background, objects), f"remove {the}",
                    cell_mask(obj.position), None, obj)
    if kind == "add":
        if n >= 3:
            raise ValueError("`add` needs a scene with at most 2 objects (a scene holds three)")
        free = _free_cells(source)
        kinds = [(c, s) for c in COLORS for s in SHAPES if _kind_free(source, c, s)]
        color, shape = kinds[rng.integers(len(kinds))]
        new = SceneObject(shape, color, list(SIZES)[rng.integers(2)], free[rng.integers(len(free))])
        return Edit(kind, source, Scene(source.background, (*source.objects, new)),
                    f"add {new.phrase}", cell_mask(new.position), new)
    options = [b for b in BACKGROUNDS if b != source.background]
    new_bg = options[rng.integers(len(options))]
    return Edit(kind, source, Scene(new_bg, source.objects), f"change the background to {new_bg}",
                np.ones((CANVAS, CANVAS), dtype=np.uint8), None)


def applicable_kinds(scene: Scene) -> list[str]:
    kinds = ["recolor", "resize", "move", "background", "reshape"]
    if len(scene.objects) >= 2:
        kinds.append("remove")
    if len(scene.objects) <= 2:
        kinds.append("add")
    return kinds


def sample_edit(rng: np.random.Generator, source: Scene, kind: str | None = None) -> Edit:
    """Draw an applicable edit (reshape can fail when every shape of that colour is taken)."""
    kinds = [kind] if kind else applicable_kinds(source)
    for _ in range(20):
        try:
            return make_edit(source, kinds[rng.integers(len(kinds))], rng)
        except ValueError:
            if kind:
                raise
    raise ValueError(f"no applicable edit for scene {source.to_json()}")


def edit_success(judged: JudgedScene, edit: Edit) -> bool:
    """Are the edited attributes right in the judged result?"""
    if edit.kind == "background":
        return judged.background == edit.target.background
    if edit.kind == "remove":
        gone = edit.removed
        assert gone is not None
        return not any(o.color == gone.color and o.position == gone.position for o in judged.objects)
    assert edit.changed is not None
    hit = match_objects((edit.changed,), judged.objects)[0]
    return hit is not None and hit.to_dict() == {
        "shape": edit.changed.shape, "color": edit.changed.color,
        "size": edit.changed.size, "position": edit.changed.position,
    }


def edit_preservation(judged: JudgedScene, edit: Edit) -> bool:
    """Are all non-edited attributes unchanged (other objects, background, no extras)?"""
    cmp = compare(judged, edit.target)
    keep = [k for k, o in enumerate(edit.target.objects) if o != edit.changed]
    flags = [cmp.no_extra] + [all(cmp.objects[k].values()) for k in keep]
    if edit.kind != "background":
        flags.append(cmp.background)
    return all(flags)


_FORMS = (  # the grammar of editloop.world.instructions, as make_edit writes it
    ("recolor", re.compile(r"make the (\w+) (\w+) (\w+)$")),
    ("reshape", re.compile(r"turn the (\w+) (\w+) into a (\w+)$")),
    ("resize", re.compile(r"make the (\w+) (\w+) (larger|smaller)$")),
    ("move", re.compile(r"move the (\w+) (\w+) to the (.+)$")),
    ("remove", re.compile(r"remove the (\w+) (\w+)$")),
    ("add", re.compile(r"add a (\w+) (\w+) (\w+) at the (.+)$")),
    ("background", re.compile(r"change the background to (\w+)$")),
)


def apply_instruction(source: Scene, instruction: str) -> Scene:
    """The scene `instruction` asks for, done to `source` (what a person reading it expects to see); ValueError
    when it does not apply (names an object the scene lacks, or would make an invalid scene)."""
    from editloop.world.instructions import check_instruction

    text = check_instruction(instruction)
    for kind, form in _FORMS:
        if (m := form.match(text)) is None or (kind == "recolor" and m.group(3) in ("larger", "smaller")):
            continue
        if kind == "background":
            return Scene(m.group(1), source.objects)
        if kind == "add":
            size, color, shape, position = m.groups()
            return Scene(source.background, (*source.objects, SceneObject(shape, color, size, position)))
        color, shape = m.group(1), m.group(2)
        index = next((i for i, o in enumerate(source.objects) if (o.color, o.shape) == (color, shape)), None)
        if index is None:
            raise ValueError(f"`instruction` {text!r} names the {color} {shape}, which the scene does not hold")
        obj = source.objects[index]
        if kind == "remove":
            return Scene(source.background, tuple(o for i, o in enumerate(source.objects) if i != index))
        value = m.group(3)
        field = {"recolor": "color", "reshape": "shape", "resize": "size", "move": "position"}[kind]
        if kind == "resize":
            value = "large" if value == "larger" else "small"
        return _with_object(source, index, replace(obj, **{field: value}))
    raise ValueError(f"`instruction` {text!r} has no form")  # check_instruction admits only the forms above


def judged_scene(judged: JudgedScene) -> Scene | None:
    """The scene the judge read, or None when it is not a valid scene (no object, more than three, two alike)."""
    try:
        return Scene(judged.background, tuple(SceneObject(o.shape, o.color, o.size, o.position)
                                              for o in judged.objects))
    except ValueError:
        return None
