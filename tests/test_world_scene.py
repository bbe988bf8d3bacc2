import numpy as np
import pytest

from editloop.world import Scene, SceneObject, caption, sample_scene
from editloop.world.palette import VOCABULARY


def test_caption_matches_the_contract_example():
    scene = Scene("white", (SceneObject("circle", "red", "large", "top left"),
                            SceneObject("square", "blue", "small", "center")))
    assert caption(scene) == (
        "a large red circle at the top left and a small blue square at the center on a white background"
    )


def test_three_objects_join_with_comma_then_and():
    scene = Scene.from_dict({"background": "black", "objects": [
        {"shape": "circle", "color": "red", "size": "large", "position": "top"},
        {"shape": "square", "color": "red", "size": "small", "position": "left"},
        {"shape": "triangle", "color": "green", "size": "small", "position": "right"}]})
    assert scene.caption == ("a large red circle at the top, a small red square at the left and "
                             "a small green triangle at the right on a black background")


def test_json_round_trip_keeps_names_and_order():
    rng = np.random.default_rng(3)
    for _ in range(50):
        s = sample_scene(rng)
        assert Scene.from_json(s.to_json()) == s
        assert list(s.to_dict()) == ["background", "objects"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"background": "pink", "objects": []}, "`background` must be one of"),
        ({"background": "white", "objects": [{"shape": "circle", "color": "teal", "size": "large",
                                              "position": "top"}]}, "got 'teal'"),
        ({"background": "white", "objects": [
            {"shape": "circle", "color": "red", "size": "large", "position": "top"},
            {"shape": "square", "color": "blue", "size": "small", "position": "top"}]},
         "`position` 'top' holds two objects"),
        ({"background": "white", "objects": [
            {"shape": "circle", "color": "red", "size": "large", "position": "top"},
            {"shape": "circle", "color": "red", "size": "small", "position": "left"}]},
         "appears twice"),
        ({"background": "white", "objects": []}, "1 to 3 objects, got 0"),
        ({"background": "white", "objects": [{"shape": "circle"}]}, "missing color, size, position"),
    ],
)
def test_contract_violations_name_the_field_and_value(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Scene.from_dict(data)


def test_every_caption_word_is_in_the_vocabulary():
    rng = np.random.default_rng(0)
    words = set()
    for _ in range(300):
        words |= set(sample_scene(rng).caption.replace(",", " ,").split())
    assert words <= set(VOCABULARY)
