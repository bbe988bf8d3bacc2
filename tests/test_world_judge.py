import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from editloop.world import Quality, Scene, SceneObject, compare, judge, render, sample_quality, sample_scene
from editloop.world.palette import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES


@st.composite
def scenes(draw):
    n = draw(st.integers(1, 3))
    cells = draw(st.permutations(list(POSITIONS)))[:n]
    kinds = draw(st.permutations([(c, s) for c in COLORS for s in SHAPES]))[:n]
    objects = tuple(SceneObject(s, c, draw(st.sampled_from(list(SIZES))), p) for (c, s), p in zip(kinds, cells))
    return Scene(draw(st.sampled_from(list(BACKGROUNDS))), objects)


@settings(max_examples=300, deadline=None)
@given(scenes())
def test_judge_recovers_every_clean_render_exactly(scene):
    judged = judge(render(scene))
    assert judged.background == scene.background
    assert sorted(map(str, (o.to_dict() for o in judged.objects))) == sorted(
        map(str, (o.__dict__ for o in scene.objects))
    )
    assert compare(judged, scene).all_correct


def test_render_is_deterministic_and_clean_has_exact_palette_colors():
    scene = Scene("gray", (SceneObject("triangle", "orange", "large", "bottom right"),))
    a, b = render(scene), render(scene)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    colors = {tuple(c) for c in a.reshape(-1, 3)}
    assert colors == {BACKGROUNDS["gray"], COLORS["orange"]}


def test_shape_geometry_matches_the_contract():
    # small circle: radius 5 -> 81 pixels; small square 11x11; small triangle rows 1,1,3,3,...,11
    for shape, area in (("circle", 81), ("square", 121), ("triangle", 61)):
        img = render(Scene("black", (SceneObject(shape, "red", "small", "center"),)))
        assert int((img == COLORS["red"]).all(axis=2).sum()) == area


def judged_accuracy(q: float, n_objects: int, n: int = 300, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = []
    for _ in range(n):
        scene = sample_scene(rng, n_objects)
        hits.append(compare(judge(render(scene, sample_quality(rng, n_objects, q))), scene).all_correct)
    return float(np.mean(hits))


def test_judged_accuracy_against_q_stays_high_for_single_objects(capsys):
    table = {q: judged_accuracy(q, 1) for q in (0.0, 0.25, 0.5, 0.75, 1.0)}
    with capsys.disabled():
        print("\njudged caption accuracy of single-object renders vs q:",
              {q: round(a, 3) for q, a in table.items()})
    assert table[0.0] == 1.0
    assert table[1.0] >= 0.9


def test_degradations_are_bounded_and_validated():
    rng = np.random.default_rng(1)
    q = sample_quality(rng, 3, 0.5)
    assert all(abs(v) <= 2 for j in q.jitter for v in j)  # round(3 * 0.5) = 2
    assert q.blur <= 0.4 and q.noise <= 0.02
    assert Quality().is_clean
    import pytest

    with pytest.raises(ValueError, match="`blur` must be in"):
        Quality(blur=2.0)
    with pytest.raises(ValueError, match="`q` must be in"):
        sample_quality(rng, 1, 1.5)


def test_judge_rejects_wrong_size_and_mode():
    import pytest

    with pytest.raises(ValueError, match=r"got shape \(32, 64, 3\)"):
        judge(np.zeros((32, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="must be uint8, got float32"):
        judge(np.zeros((64, 64, 3), dtype=np.float32))
