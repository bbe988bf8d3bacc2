"""A model version reviewed by people: side-by-side pairs against the served model, and their verdicts.

A feedback stage asked for a review by people writes one comparison pair per held-out edit (A: the
candidate version's image, B: the served model's, the same example and seed), which `editloop
annotation push` turns into Label Studio side-by-side tasks; the verdicts the sync records (from A's
side) are counted here, and `editloop models review` promotes the version only if the reviewers
prefer it (good > bad, by a one-sided sign test at level 0.05) once enough verdicts are in.
"""

from __future__ import annotations

from collections import Counter
from math import comb

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import Comparison, ComparisonPair, ModelVersion
from editloop.labels.stats import GSB
from editloop.records import get_or_create_image, get_or_create_prompt
from editloop.store.base import BlobStore
from editloop.world.io import mask_to_png, to_png

AWAITING = "awaiting the reviewers' side-by-side verdicts"  # the guard a candidate carries until then


def request_review(session: Session, store: BlobStore, candidate: str, served: str, candidate_images: np.ndarray,
                   served_images: np.ndarray, prompts: list[str], sources: np.ndarray | None = None,
                   masks: np.ndarray | None = None) -> list[int]:
    """One comparison pair per prompt (candidate's image as A; for edits, with the source and mask the reviewer
    sees); idempotent: a rerun finds the same pairs."""
    counts = {len(candidate_images), len(served_images), len(prompts)} | (
        {len(sources), len(masks)} if sources is not None and masks is not None else set())
    if len(counts) != 1:
        raise ValueError(f"a review needs one image per prompt from each model; got {len(candidate_images)} "
                         f"candidate, {len(served_images)} served, {len(prompts)} prompts"
                         + (f", {len(sources)} sources, {len(masks)} masks" if sources is not None else ""))
    ids = []
    for i, (a, b, text) in enumerate(zip(candidate_images, served_images, prompts)):
        key = f"review:{candidate}:{i}"
        pair = session.scalars(select(ComparisonPair).where(ComparisonPair.idempotency_key == key)).one_or_none()
        if pair is None:
            pair = ComparisonPair(prompt_id=get_or_create_prompt(session, text).id,
                                  a_image_id=_image(session, store, a), b_image_id=_image(session, store, b),
                                  a_label=candidate, b_label=served, idempotency_key=key)
            if sources is not None and masks is not None:
                pair.source_image_id = _image(session, store, sources[i])
                pair.mask_key = store.put(mask_to_png(masks[i]), "image/png")
            session.add(pair)
            session.flush()
        ids.append(pair.id)
    return ids


def _image(session: Session, store: BlobStore, image: np.ndarray) -> int:
    return get_or_create_image(session, store.put(to_png(image), "image/png"), image.shape[1], image.shape[0]).id


def review_verdicts(session: Session, candidate: str) -> tuple[GSB, int]:
    """(the valid verdicts on `candidate`'s review pairs, from its side; how many pairs it has)."""
    pair_ids = list(session.scalars(select(ComparisonPair.id).where(ComparisonPair.a_label == candidate,
                                                                    ComparisonPair.idempotency_key.like("review:%"))))
    counts = Counter(session.scalars(select(Comparison.verdict).where(Comparison.pair_id.in_(pair_ids),
                                                                      Comparison.status == "valid")))
    return GSB(counts["good"], counts["same"], counts["bad"]), len(pair_ids)


REVIEW_ALPHA = 0.05  # the sign test's level: good > bad by more than chance


def preference_p_value(gsb: GSB) -> float:
    """One-sided sign test of "the reviewers prefer the candidate": P(X >= good) for X ~ Binomial(good + bad, 1/2),
    "same" verdicts dropped. Verdicts are counted as independent (several reviewers of one pair are not quite)."""
    n = gsb.good + gsb.bad
    return sum(comb(n, k) for k in range(gsb.good, n + 1)) / 2**n if n else 1.0


def review_guard(gsb: GSB, against: str = "the served model", alpha: float = REVIEW_ALPHA) -> str | None:
    """Why the reviewers' verdicts do not support a promotion (None: they prefer the candidate, good > bad by
    more than chance at level `alpha`; a coin-flip margin such as 124 / 122 is not a preference)."""
    p = preference_p_value(gsb)
    if gsb.good > gsb.bad and p < alpha:
        return None
    return (f"the reviewers do not prefer it to {against} side by side (good / same / bad "
            f"{gsb.good} / {gsb.same} / {gsb.bad}; sign test p = {p:.3f}, needs < {alpha})")


def record_review(row: ModelVersion, gsb: GSB, pairs: int, min_verdicts: int) -> str | None:
    """Write the verdicts into the version's metrics and replace its AWAITING guard with the reviewers'
    decision. Returns why the review cannot conclude yet (too few verdicts), else None."""
    verdicts = gsb.good + gsb.same + gsb.bad
    if verdicts < min_verdicts:
        return f"{verdicts} side-by-side verdicts on its {pairs} review pairs; the review needs {min_verdicts}"
    guards = [g for g in row.metrics.get("guard_failures", []) if not g.startswith(AWAITING)]
    why = review_guard(gsb)
    review = {"good": gsb.good, "same": gsb.same, "bad": gsb.bad, "superiority": gsb.superiority, "by": "people"}
    row.metrics = {**row.metrics, "guard_failures": guards + ([why] if why else []), "review": review}
    return None
