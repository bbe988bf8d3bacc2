"""Shapes World v1: the procedural world that makes learning measurable (../shared/WORLD.md)."""

from editloop.world.annotators import SimulatedAnnotator, panel, reversed_weights, utility
from editloop.world.edits import EDIT_KINDS, Edit, edit_preservation, edit_success, make_edit, sample_edit
from editloop.world.judge import JudgedScene, judge
from editloop.world.masks import cell_mask, outpaint_mask
from editloop.world.metrics import compare, masked_l1
from editloop.world.render import Quality, render, sample_quality
from editloop.world.scene import Scene, SceneObject, caption, parse_caption, sample_scene

__all__ = [
    "EDIT_KINDS", "Edit", "JudgedScene", "Quality", "Scene", "SceneObject", "SimulatedAnnotator",
    "caption", "cell_mask", "parse_caption", "compare", "edit_preservation", "edit_success", "judge", "make_edit",
    "masked_l1", "outpaint_mask", "panel", "render", "reversed_weights", "sample_edit",
    "sample_quality", "sample_scene", "utility",
]
