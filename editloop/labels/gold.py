"""Gold sets: candidate sets with a known answer, mixed among the others to measure each annotator.

Here the known answer is the world's: the image of highest (best) and lowest (worst) utility under a taste's
noiseless weights (WORLD.md; the default taste unless told), over edit sets of world renders at mixed quality
(a source, a cell mask and N versions of the scene), so they land in the same Label Studio project as the
editors' edit sets and look like them. On a real deployment an expert would set the answers
(`record_gold`). `gold_accuracy` is what `editloop annotation stats` prints per annotator: how often their best,
their worst, and both, match the known answer, with how many gold labels that is measured on.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import CandidateSet, GoldAnswer, Preference
from editloop.labels.simulated import add_candidate_set
from editloop.store.base import BlobStore
from editloop.world import cell_mask, render, sample_scene
from editloop.world.annotators import DEFAULT_WEIGHTS, utility
from editloop.world.render import sample_quality

GOLD_SEED = 3_000_000  # apart from the label batches (500000+) and every held-out set


def record_gold(session: Session, set_id: int, best_position: int, worst_position: int, source: str) -> GoldAnswer:
    """Mark candidate set `set_id`'s answer as known (positions of its best and worst image)."""
    cs = session.get(CandidateSet, set_id)
    if cs is None:
        raise ValueError(f"no candidate set {set_id}")
    n = len(cs.items)
    for name, value in (("best_position", best_position), ("worst_position", worst_position)):
        if not 0 <= value < n:
            raise ValueError(f"`{name}` must be in 0..{n - 1} (set {set_id} has {n} images), got {value}")
    if best_position == worst_position:
        raise ValueError(f"`best_position` and `worst_position` are both {best_position}")
    gold = session.get(GoldAnswer, set_id) or GoldAnswer(candidate_set_id=set_id)
    gold.best_image_id, gold.worst_image_id = cs.items[best_position].image_id, cs.items[worst_position].image_id
    gold.source = source
    session.add(gold)
    return gold


def make_gold_sets(session: Session, store: BlobStore, n_sets: int, n_images: int = 4,
                   seed: int = GOLD_SEED, weights: dict[str, float] | None = None) -> list[int]:
    """`n_sets` edit sets of world renders with the world's answer under `weights` recorded; their ids. The
    caller commits (with whatever records that they were made)."""
    if not 1 <= n_sets <= 1000:
        raise ValueError(f"`sets` must be in 1..1000, got {n_sets}")
    if not 2 <= n_images <= 16:
        raise ValueError(f"`images` must be in 2..16, got {n_images}")
    weights = dict(weights or DEFAULT_WEIGHTS)
    rng = np.random.default_rng(seed)
    ids = []
    for _ in range(n_sets):
        scene = sample_scene(rng)
        images = [render(scene, sample_quality(rng, len(scene.objects), q=float(rng.uniform(0, 1))))
                  for _ in range(n_images)]
        u = [utility(im, scene, weights) for im in images]
        set_id = add_candidate_set(session, store, scene.caption, images, "inpaint", render(scene),
                                   cell_mask(scene.objects[0].position))
        record_gold(session, set_id, int(np.argmax(u)), int(np.argmin(u)), "world judge")
        ids.append(set_id)
    return ids


def gold_accuracy(session: Session) -> dict[str, dict[str, float | int]]:
    """Per annotator: gold labels, and the fraction whose best, worst and both match the known answer."""
    rows = session.execute(select(Preference, GoldAnswer).join(
        GoldAnswer, GoldAnswer.candidate_set_id == Preference.candidate_set_id).where(Preference.status == "valid"))
    hits: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for pref, gold in rows:
        hits[pref.annotator].append((pref.best_image_id == gold.best_image_id,
                                     pref.worst_image_id == gold.worst_image_id))
    return {who: {"gold_labels": len(h), "best": round(sum(b for b, _ in h) / len(h), 3),
                  "worst": round(sum(w for _, w in h) / len(h), 3),
                  "both": round(sum(b and w for b, w in h) / len(h), 3)} for who, h in sorted(hits.items())}
