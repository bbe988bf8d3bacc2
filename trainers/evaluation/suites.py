"""Held-out suites an editor is evaluated on, by name.

- `world` (the default): the Shapes World's held-out sets, judged by the world's judge. For the inpainting editor:
  erase, inpaint and outpaint examples (trainers/feedback/examples.py) from seed EDITOR_SUITE_SEED, apart from the
  seeds training (per step), the gate (20 000) and checkpoint selection (40 000) draw from; for the instruction
  editor: the alignment rounds' held-out edits (trainers/align/evaluate.py, per edit kind).
- a folder given by path, in one of two layouts (images are resized to the editor's resolution; masks are
  single-channel or RGB images, a pixel >= 128 is inside the edit region):
  - `manifest.jsonl`: one JSON object per line with `id`, `source`, `instruction` and optionally `mask`, `target`
    (the reference edited image), `source_caption`, `target_caption`; paths relative to the folder. ImgEdit,
    GEdit-Bench and EditBench exports convert to it line by line;
  - MagicBrush's test split as it unpacks: `edit_sessions.json` ({image id: [turns]}, each turn with `input`,
    `mask`, `output`, `instruction`) and `images/<image id>/<file>`; every turn is one item, edited from its
    own `input` (turn by turn, not chained).
  A folder suite has no judge: it is measured by the pixel metrics outside the mask, against the reference where
  one is given, and by CLIP when CLIP weights are given by path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

EDITOR_SUITE_SEED = 60_000
WORLD = "world"


@dataclass(frozen=True)
class SuiteItem:
    id: str
    source: np.ndarray  # H,W,3 uint8
    instruction: str  # what the instruction editor is asked (and the inpainting editor's prompt when no caption)
    mask: np.ndarray | None = None  # H,W uint8, 1 = the edit region
    target: np.ndarray | None = None  # a reference result, where the suite has one
    source_caption: str = ""
    target_caption: str = ""
    task: str = ""  # world suites: erase / inpaint / outpaint, or the edit kind

    @property
    def prompt(self) -> str:
        return self.target_caption or self.instruction


@dataclass(frozen=True)
class Suite:
    name: str
    items: list[SuiteItem]
    judged: list = field(default_factory=list)  # world suites: the FeedbackExample or Edit of each item


def world_editor_suite(n: int, seed: int = EDITOR_SUITE_SEED) -> Suite:
    """`n` erase / inpaint / outpaint examples (a third each) with their captions as prompts."""
    from trainers.feedback.examples import feedback_examples

    examples = feedback_examples(n, seed)
    items = [SuiteItem(f"{seed}-{i}", e.source, e.prompt, e.mask, None, "", e.prompt, e.task)
             for i, e in enumerate(examples)]
    return Suite(f"{WORLD}-inpaint-{seed}-{n}", items, list(examples))


def world_instruct_suite(per_kind: int) -> Suite:
    """The alignment rounds' held-out edits, `per_kind` of each edit kind, rendered clean."""
    from editloop.world.render import render
    from trainers.align.evaluate import HELD_OUT_SEED, held_out_edits

    edits = held_out_edits(per_kind)
    items = [SuiteItem(f"{HELD_OUT_SEED}-{i}", render(e.source), e.instruction, e.mask, None, e.source.caption,
                       e.target.caption, e.kind) for i, e in enumerate(edits)]
    return Suite(f"{WORLD}-instruct-{HELD_OUT_SEED}-{per_kind}", items, list(edits))


def _image(path: Path, size: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"the suite names `{path}`, which is not a file")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))


def _mask(path: Path, size: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"the suite names mask `{path}`, which is not a file")
    with Image.open(path) as im:
        return (np.asarray(im.convert("L").resize((size, size), Image.NEAREST)) >= 128).astype(np.uint8)


def _manifest_items(root: Path, size: int) -> list[SuiteItem]:
    items = []
    for n, line in enumerate((root / "manifest.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"`{root / 'manifest.jsonl'}` line {n} is not JSON ({exc.msg})") from None
        missing = [k for k in ("id", "source", "instruction") if not row.get(k)]
        if missing:
            raise ValueError(f"`{root / 'manifest.jsonl'}` line {n} lacks {missing} (needs id, source, instruction)")
        items.append(SuiteItem(str(row["id"]), _image(root / row["source"], size), str(row["instruction"]),
                               _mask(root / row["mask"], size) if row.get("mask") else None,
                               _image(root / row["target"], size) if row.get("target") else None,
                               str(row.get("source_caption", "")), str(row.get("target_caption", ""))))
    return items


def _magicbrush_items(root: Path, size: int) -> list[SuiteItem]:
    sessions = json.loads((root / "edit_sessions.json").read_text())
    items = []
    for image_id, turns in sorted(sessions.items()):
        folder = root / "images" / image_id
        for k, turn in enumerate(turns):
            items.append(SuiteItem(f"{image_id}-{k + 1}", _image(folder / turn["input"], size), turn["instruction"],
                                   _mask(folder / turn["mask"], size) if turn.get("mask") else None,
                                   _image(folder / turn["output"], size) if turn.get("output") else None))
    return items


def folder_suite(root: Path, size: int, limit: int | None = None) -> Suite:
    """The suite in folder `root` (manifest.jsonl or MagicBrush's edit_sessions.json), its first `limit` items."""
    root = Path(root)
    if (root / "manifest.jsonl").is_file():
        items, layout = _manifest_items(root, size), "manifest"
    elif (root / "edit_sessions.json").is_file():
        items, layout = _magicbrush_items(root, size), "magicbrush"
    else:
        raise ValueError(f"suite folder `{root}` holds neither manifest.jsonl nor edit_sessions.json (MagicBrush); "
                         "see trainers/evaluation/suites.py for the layouts")
    if not items:
        raise ValueError(f"suite folder `{root}` lists no items")
    return Suite(f"{layout}:{root.resolve()}", items[:limit] if limit else items)


DEFAULT_N = {"editor": 48, "instruct": 4}  # world suites: examples, and edits per kind


def resolve_suite(name: str, editor: str, n: int | None = None, size: int = 64) -> Suite:
    """`world` (the editor's world suite: `n` examples, or `n` per edit kind for the instruction editor; DEFAULT_N
    when None) or a folder path (its first `n` items; all when None)."""
    if n is not None and n < 1:
        raise ValueError(f"`--n` must be >= 1, got {n}")
    if name == WORLD:
        return world_editor_suite(n or DEFAULT_N[editor]) if editor == "editor" else world_instruct_suite(
            n or DEFAULT_N[editor])
    return folder_suite(Path(name), size, n)
