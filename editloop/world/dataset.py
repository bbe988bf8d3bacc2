"""Seeded samples of the world: scenes, renders and their records (for `world sample`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from editloop.world.io import save_png
from editloop.world.render import Quality, render, sample_quality
from editloop.world.scene import Scene, sample_scene


@dataclass(frozen=True)
class Sample:
    scene: Scene
    quality: Quality
    image: np.ndarray


def iter_samples(seed: int, n: int, q: float = 1.0, clean: bool = False) -> Iterator[Sample]:
    """`n` samples, deterministic in `seed`; the quality mix draws at `q` unless `clean`."""
    if n < 0:
        raise ValueError(f"`n` must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    for _ in range(n):
        scene = sample_scene(rng)
        quality = Quality() if clean else sample_quality(rng, len(scene.objects), q)
        yield Sample(scene, quality, render(scene, quality))


def write_samples(samples: Iterator[Sample], out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out / "scenes.jsonl", "w") as index:
        for i, s in enumerate(samples):
            name = f"{i:04d}.png"
            save_png(s.image, out / name)
            record = {"file": name, "scene": s.scene.to_dict(), "caption": s.scene.caption,
                      "quality": s.quality.to_dict()}
            index.write(json.dumps(record) + "\n")
            count += 1
    return count
