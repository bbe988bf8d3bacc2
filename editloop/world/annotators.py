"""Simulated annotators: a hidden utility over measurable quality and faithfulness, noisy
best/worst answers by Plackett-Luce sampling with temperature (WORLD.md "Simulated annotators")."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from editloop.world.judge import judge
from editloop.world.metrics import compare
from editloop.world.properties import measure
from editloop.world.scene import Scene

FEATURES = ("sharpness", "clean", "color", "centring", "faithfulness")
DEFAULT_WEIGHTS: dict[str, float] = {
    "sharpness": 1.0,
    "clean": 1.0,
    "color": 1.0,
    "centring": 0.5,
    "faithfulness": 3.0,
}


def features(image: np.ndarray, intended: Scene | None) -> np.ndarray:
    """Normalised quality features, each about 0 for a clean render and about -1 at q = 1."""
    judged = judge(image)
    props = measure(image, judged)
    faith = compare(judged, intended).attribute_accuracy if intended is not None else 1.0
    return np.array(
        [
            (props.sharpness - 0.55) / 0.08,
            -props.noise / 0.05,
            -props.color_error / 0.1,
            -max(props.centring - 0.9, 0.0) / 2.0,
            faith,
        ]
    )


def utility(image: np.ndarray, intended: Scene | None, weights: dict[str, float]) -> float:
    unknown = set(weights) - set(FEATURES)
    if unknown:
        raise ValueError(f"`weights` has unknown features {sorted(unknown)}; known: {list(FEATURES)}")
    w = np.array([weights.get(k, 0.0) for k in FEATURES])
    return float(w @ features(image, intended))


def reversed_weights(weights: dict[str, float] | None = None) -> dict[str, float]:
    """The opposite taste on every quality feature (faithfulness kept: an edit still has a target)."""
    weights = dict(weights or DEFAULT_WEIGHTS)
    return {k: (v if k == "faithfulness" else -v) for k, v in weights.items()}


@dataclass
class SimulatedAnnotator:
    name: str
    temperature: float = 0.5  # higher = noisier answers
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}")
        self._rng = np.random.default_rng(self.seed)

    def utilities(self, images: list[np.ndarray], intended: Scene | None) -> np.ndarray:
        return np.array([utility(im, intended, self.weights) for im in images])

    def best_worst_from_utilities(self, u: np.ndarray) -> tuple[int, int]:
        """Plackett-Luce: best ~ softmax(u / T); worst ~ softmax(-u / T) over the rest."""
        if len(u) < 2:
            raise ValueError(f"a candidate set needs at least 2 images, got {len(u)}")
        best = int(self._rng.choice(len(u), p=_softmax(u / self.temperature)))
        rest = np.array([i for i in range(len(u)) if i != best])
        worst = int(rest[self._rng.choice(len(rest), p=_softmax(-u[rest] / self.temperature))])
        return best, worst

    def best_worst(self, images: list[np.ndarray], intended: Scene | None) -> tuple[int, int]:
        return self.best_worst_from_utilities(self.utilities(images, intended))

    def prefers(self, u_a: float, u_b: float) -> bool:
        """One noisy pairwise choice (Bradley-Terry)."""
        return bool(self._rng.random() < 1.0 / (1.0 + np.exp(-(u_a - u_b) / self.temperature)))

    def consistency(self, u_a: np.ndarray, u_b: np.ndarray) -> float:
        """Expected agreement of this annotator's pairwise choices with its own utility order."""
        p = 1.0 / (1.0 + np.exp(-np.abs(u_a - u_b) / self.temperature))
        return float(p.mean())


def panel(
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0),
    weights: dict[str, float] | None = None,
    seed: int = 0,
) -> list[SimulatedAnnotator]:
    """Annotators sharing one taste with different noise levels (for disagreement)."""
    return [
        SimulatedAnnotator(f"sim-{i}-T{t:g}", t, dict(weights or DEFAULT_WEIGHTS), seed + i)
        for i, t in enumerate(temperatures)
    ]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def intended_scene(prompt: str, source: np.ndarray | None = None) -> Scene | None:
    """What a person reading a task expects to see: the scene a caption describes, or for an instruction the
    source image's scene (as the judge reads it) with the instruction done to it; None when neither applies."""
    from editloop.world.edits import apply_instruction, judged_scene
    from editloop.world.scene import parse_caption

    try:
        return parse_caption(prompt)
    except ValueError:
        pass
    scene = judged_scene(judge(source)) if source is not None else None
    if scene is None:
        return None
    try:
        return apply_instruction(scene, prompt)
    except ValueError:
        return None
