"""Labelling configs (Label Studio XML): best/worst over a candidate set, and side-by-side Good/Same/Bad.

Label Studio validates each config when a project is created with it. Choice values are image
positions ("1".."N") so a result maps back to a candidate item without string matching on labels.
Best takes the digit keys, worst the letters under them, side-by-side takes 1 / 2 / 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

BEST_KEYS = "123456789"
WORST_KEYS = "qwertyuio"
MAX_CANDIDATES = 16
TASK_KINDS = ("t2i", "edit", "instruct")

BEST_WORST_INSTRUCTIONS = (
    "<p><b>Pick the best and the worst image.</b> Judge how well each image follows the prompt "
    "(objects, colours, shapes, sizes, positions) and how clean it looks. Both answers are required and "
    "must differ. Hotkeys: best = 1..9, worst = q..o (the key under the digit).</p>"
)
EDIT_INSTRUCTIONS = (
    "<p><b>Pick the best and the worst edit.</b> The source image is shown with the edited region tinted red. "
    "A good edit changes only that region, follows the instruction, and blends in. Both answers are required "
    "and must differ. Hotkeys: best = 1..9, worst = q..o.</p>"
)
INSTRUCT_INSTRUCTIONS = (
    "<p><b>Pick the best and the worst edit.</b> Each image is the source image edited by the instruction above "
    "it. A good edit does what the instruction says, keeps everything else as it was, and looks clean. Both "
    "answers are required and must differ. Hotkeys: best = 1..9, worst = q..o.</p>"
)
SIDE_BY_SIDE_INSTRUCTIONS = (
    "<p><b>Which image is better?</b> Compare the left and the right image for the same prompt. "
    "Hotkeys: 1 = left is better, 2 = about the same, 3 = right is better.</p>"
)
SIDE_BY_SIDE_EDIT_INSTRUCTIONS = (
    "<p><b>Which edit is better?</b> Both were made from the source image shown above them, in the region tinted "
    "red, for the caption. A good edit changes only that region, matches the caption, and blends in. "
    "Hotkeys: 1 = left is better, 2 = about the same, 3 = right is better.</p>"
)
SIDE_BY_SIDE_CHOICES = ("Left", "Same", "Right")


@dataclass(frozen=True)
class ProjectSpec:
    """One Label Studio project: a labelling kind and, for best/worst, the candidate count it shows."""

    kind: str  # t2i | edit | instruct | side_by_side | side_by_side_edit
    n: int = 0
    prefix: str = "editloop"  # one Label Studio can hold several editloop deployments' projects

    @property
    def title(self) -> str:
        if self.kind == "side_by_side":
            return f"{self.prefix} side-by-side (Good/Same/Bad)"
        if self.kind == "side_by_side_edit":
            return f"{self.prefix} side-by-side edits (Good/Same/Bad)"
        return f"{self.prefix} best/worst {self.kind} x{self.n}"

    def label_config(self) -> str:
        if self.kind in ("side_by_side", "side_by_side_edit"):
            return side_by_side_config(edit=self.kind == "side_by_side_edit")
        return best_worst_config(self.n, edit=self.kind == "edit", instruct=self.kind == "instruct")

    @property
    def instructions(self) -> str:
        return {"t2i": BEST_WORST_INSTRUCTIONS, "edit": EDIT_INSTRUCTIONS, "instruct": INSTRUCT_INSTRUCTIONS,
                "side_by_side_edit": SIDE_BY_SIDE_EDIT_INSTRUCTIONS}.get(self.kind, SIDE_BY_SIDE_INSTRUCTIONS)


def _choices(name: str, n: int, keys: str, to_name: str) -> str:
    rows = [f'    <Choice value="{i + 1}"' + (f' hotkey="{keys[i]}"' if i < len(keys) else "") + "/>" for i in range(n)]
    return (f'  <Header value="{name.capitalize()} image"/>\n'
            f'  <Choices name="{name}" toName="{to_name}" choice="single-radio" showInline="true" required="true" '
            f'requiredMessage="Pick the {name} image">\n' + "\n".join(rows) + "\n  </Choices>")


def _image(name: str, caption: str) -> str:
    return (f'    <View style="display:inline-block;margin:4px;text-align:center">\n'
            f'      <Image name="{name}" value="${name}" width="192px" height="192px" smoothing="false"/>\n'
            f'      <Text name="{name}_caption" value="{escape(caption)}"/>\n'
            f"    </View>")


def best_worst_config(n: int, edit: bool = False, instruct: bool = False) -> str:
    """Prompt (or caption plus source with the mask over it, or instruction plus source) and N images; best and
    worst both required."""
    if not 2 <= n <= MAX_CANDIDATES:
        raise ValueError(f"`n` must be in 2..{MAX_CANDIDATES}, got {n}")
    header = ['  <Header value="$prompt"/>']
    if edit:
        header += edit_header()
    if instruct:
        header += ['  <View style="display:flex;gap:8px">', _image("source_image", "source"), "  </View>"]
    images = "\n".join(_image(f"img{i + 1}", str(i + 1)) for i in range(n))
    return "\n".join([
        "<View>", *header,
        '  <View style="display:flex;flex-wrap:wrap">', images, "  </View>",
        _choices("best", n, BEST_KEYS, "img1"),
        _choices("worst", n, WORST_KEYS, "img1"),
        "</View>",
    ])


def edit_header() -> list[str]:
    """The source image and the edited region above an edit task's images."""
    return ['  <View style="display:flex;gap:8px">', _image("source_image", "source"),
            _image("mask_overlay", "edited region"), "  </View>"]


def side_by_side_config(edit: bool = False) -> str:
    """Two images for one prompt (with `edit`, under the source and the edited region); Left / Same / Right."""
    rows = "\n".join(f'    <Choice value="{v}" hotkey="{i + 1}"/>' for i, v in enumerate(SIDE_BY_SIDE_CHOICES))
    return "\n".join([
        "<View>",
        '  <Header value="$prompt"/>', *(edit_header() if edit else []),
        '  <View style="display:flex">', _image("left", "left"), _image("right", "right"), "  </View>",
        '  <Choices name="verdict" toName="left" choice="single-radio" showInline="true" required="true" '
        'requiredMessage="Pick left, same or right">',
        rows,
        "  </Choices>",
        "</View>",
    ])
