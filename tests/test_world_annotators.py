import numpy as np
import pytest

from editloop.world import (
    SimulatedAnnotator,
    panel,
    render,
    reversed_weights,
    sample_quality,
    sample_scene,
    utility,
)
from editloop.world.annotators import DEFAULT_WEIGHTS


def degraded_pairs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        scene = sample_scene(rng, 1)
        yield scene, render(scene), render(scene, sample_quality(rng, 1, 1.0))


def test_default_taste_prefers_clean_and_reversed_taste_prefers_degraded():
    w, rw = DEFAULT_WEIGHTS, reversed_weights()
    clean_wins = [utility(c, s, w) > utility(d, s, w) for s, c, d in degraded_pairs()]
    reversed_wins = [utility(c, s, rw) > utility(d, s, rw) for s, c, d in degraded_pairs()]
    assert np.mean(clean_wins) >= 0.9
    assert np.mean(reversed_wins) <= 0.1


def test_faithfulness_counts():
    rng = np.random.default_rng(2)
    scene, other = sample_scene(rng, 2), sample_scene(rng, 2)
    img = render(scene)
    assert utility(img, scene, DEFAULT_WEIGHTS) > utility(img, other, DEFAULT_WEIGHTS)


def test_best_worst_is_a_noisy_plackett_luce_choice():
    u = np.array([0.0, 3.0, -3.0, 1.0])
    sharp = SimulatedAnnotator("sharp", temperature=0.01, seed=0)
    assert sharp.best_worst_from_utilities(u) == (1, 2)
    noisy = SimulatedAnnotator("noisy", temperature=5.0, seed=0)
    answers = [noisy.best_worst_from_utilities(u) for _ in range(400)]
    assert all(b != w for b, w in answers)
    assert len(set(answers)) > 4  # noisy labels disagree with the utility order sometimes
    best_rate = np.mean([b == 1 for b, _ in answers])
    assert 0.25 < best_rate < 0.6  # softmax(u / 5)[1] = 0.39


def test_panel_noise_levels_give_ordered_consistency():
    members = panel((0.2, 1.0, 5.0))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(size=500)
    c = [m.consistency(a, b) for m in members]
    assert c[0] > c[1] > c[2] > 0.5


def test_bad_annotator_settings_are_named():
    with pytest.raises(ValueError, match="`temperature` must be > 0, got 0"):
        SimulatedAnnotator("x", temperature=0)
    with pytest.raises(ValueError, match="unknown features"):
        utility(np.zeros((64, 64, 3), np.uint8), None, {"glow": 1.0})
    with pytest.raises(ValueError, match="at least 2 images"):
        SimulatedAnnotator("x").best_worst_from_utilities(np.array([1.0]))
