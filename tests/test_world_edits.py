import numpy as np
import pytest

from editloop.world import (
    EDIT_KINDS,
    Scene,
    SceneObject,
    cell_mask,
    edit_preservation,
    edit_success,
    judge,
    make_edit,
    masked_l1,
    outpaint_mask,
    render,
    sample_edit,
    sample_scene,
)
from editloop.world.masks import check_mask


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_rendered_targets_pass_success_and_preservation(kind):
    rng = np.random.default_rng(7)
    done = 0
    while done < 30:
        scene = sample_scene(rng)
        try:
            edit = make_edit(scene, kind, rng)
        except ValueError:
            continue
        assert edit.kind == kind
        target_img, source_img = render(edit.target), render(edit.source)
        judged = judge(target_img)
        assert edit_success(judged, edit), edit.instruction
        assert edit_preservation(judged, edit), edit.instruction
        # an unedited source fails the edit (it still shows the old attribute)
        assert not edit_success(judge(source_img), edit), edit.instruction
        # pixels outside the mask are untouched by a correct edit
        assert masked_l1(target_img, source_img, edit.mask) == 0.0
        done += 1


def test_instruction_templates():
    scene = Scene("white", (SceneObject("circle", "red", "small", "top left"),
                            SceneObject("square", "blue", "large", "center")))
    rng = np.random.default_rng(0)
    texts = {k: make_edit(scene, k, rng).instruction for k in EDIT_KINDS}
    assert texts["recolor"].startswith("make the ") and texts["recolor"].split()[-1] in (
        "green", "blue", "yellow", "purple", "orange", "red")
    assert texts["reshape"].startswith("turn the ") and " into a " in texts["reshape"]
    assert texts["resize"].endswith(("larger", "smaller"))
    assert texts["move"].startswith("move the ") and " to the " in texts["move"]
    assert texts["remove"].startswith("remove the ")
    assert texts["add"].startswith("add a ")
    assert texts["background"] in ("change the background to gray", "change the background to black")


def test_masks_follow_the_contract():
    assert cell_mask("center").sum() == 21 * 21
    assert cell_mask("top left").sum() == 21 * 21  # 2..22 fits the canvas
    assert cell_mask("top left", "bottom right").sum() == 2 * 21 * 21
    assert outpaint_mask("center32").sum() == 64 * 64 - 32 * 32
    assert outpaint_mask("center48").sum() == 64 * 64 - 48 * 48
    assert outpaint_mask("left")[:, :32].sum() == 0 and outpaint_mask("left")[:, 32:].all()
    with pytest.raises(ValueError, match="`layout` must be one of"):
        outpaint_mask("diagonal")
    with pytest.raises(ValueError, match=r"got shape \(32, 32\)"):
        check_mask(np.zeros((32, 32)))
    with pytest.raises(ValueError, match=r"only 0 and 1, got values \[0, 7\]"):
        check_mask(np.where(np.eye(64) > 0, 7, 0))


def test_remove_and_add_respect_object_counts():
    rng = np.random.default_rng(0)
    one = Scene("white", (SceneObject("circle", "red", "small", "top left"),))
    with pytest.raises(ValueError, match="at least 2 objects"):
        make_edit(one, "remove", rng)
    three = sample_scene(rng, 3)
    with pytest.raises(ValueError, match="at most 2 objects"):
        make_edit(three, "add", rng)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        make_edit(one, "explode", rng)
    assert sample_edit(rng, one).kind not in ("remove",)
