"""A model version reviewed by people: side-by-side pairs against the served model, and their verdicts.

A feedback stage asked for a review by people writes one comparison pair per held-out edit (A: the
candidate version's image, B: the served model's, the same example and seed), which `editloop
annotation push` turns into Label Studio side-by-side tasks; the verdicts the sync records (from A's
side) are counted here, and `editloop models review` promotes the version only if the reviewers
prefer it once enough verdicts are in: each pair counts once, by its reviewers' majority (several
reviewers of one pair are not independent evidence), and the pairs won must beat the pairs lost by a
one-sided sign test at level 0.05. A faster candidate (fewer sampling steps than the served model,
ByteEdit's acceleration) claims "as good, faster", not "better": it must be shown no worse, by a
non-inferiority test of the pairs' net preference against a margin (NONINFERIORITY_MARGIN).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import erfc, sqrt

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import Comparison, ComparisonPair, ModelVersion
from editloop.labels.stats import GSB, sign_test_p
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


@dataclass(frozen=True)
class Review:
    """A side-by-side review: every verdict (as ByteEdit reports GSB), and one verdict per pair (its
    reviewers' majority, ties "same"), which the gate's sign test reads."""

    verdicts: GSB
    pairs: GSB


def majority(verdicts_per_pair: Iterable[Sequence[str]]) -> Review:
    """Count each pair's verdicts ("good" / "same" / "bad", from the candidate's side) and its majority."""
    every: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for verdicts in verdicts_per_pair:
        if not verdicts:
            continue
        counts = Counter(verdicts)
        every.update(counts)
        pairs["good" if counts["good"] > counts["bad"] else "bad" if counts["bad"] > counts["good"] else "same"] += 1
    return Review(GSB(every["good"], every["same"], every["bad"]), GSB(pairs["good"], pairs["same"], pairs["bad"]))


def review_verdicts(session: Session, candidate: str) -> tuple[Review, int]:
    """(the valid verdicts on `candidate`'s review pairs, from its side; how many pairs it has)."""
    pair_ids = list(session.scalars(select(ComparisonPair.id).where(ComparisonPair.a_label == candidate,
                                                                    ComparisonPair.idempotency_key.like("review:%"))))
    by_pair: defaultdict[int, list[str]] = defaultdict(list)
    for pair_id, verdict in session.execute(select(Comparison.pair_id, Comparison.verdict).where(
            Comparison.pair_id.in_(pair_ids), Comparison.status == "valid")):
        by_pair[pair_id].append(verdict)
    return majority(by_pair.values()), len(pair_ids)


REVIEW_ALPHA = 0.05  # the sign test's level: good > bad by more than chance


def preference_p_value(gsb: GSB) -> float:
    """One-sided sign test of "the reviewers prefer the candidate": P(X >= good) for X ~ Binomial(good + bad, 1/2),
    "same" dropped; `gsb` counts independent units (pairs by their majority, not every reviewer's verdict)."""
    return sign_test_p(gsb.good, gsb.bad)


NONINFERIORITY_MARGIN = 0.1  # how much worse (net preference) a faster candidate may be and still count as as good


def noninferiority_p_value(pairs: GSB, margin: float) -> float:
    """One-sided test of H0 "the candidate is worse by `margin` or more": the pairs' net preference d = (won -
    lost) / pairs against -margin, each pair scored +1 / 0 / -1, normal approximation (z = (d + margin) / SE)."""
    n = pairs.good + pairs.same + pairs.bad
    if n == 0:
        return 1.0
    d = (pairs.good - pairs.bad) / n
    se = sqrt(max((pairs.good + pairs.bad) / n - d * d, 1e-12) / n)
    return 0.5 * erfc((d + margin) / se / sqrt(2))


def review_guard(review: Review, against: str = "the served model", alpha: float = REVIEW_ALPHA,
                 margin: float | None = None) -> str | None:
    """Why the reviewers' verdicts do not support a promotion (None: they prefer the candidate: more pairs won
    than lost, by more than chance at level `alpha`; a coin-flip margin such as 124 / 122 is not a preference).
    With a `margin` (a faster candidate), the verdicts need only show it no worse than that (non-inferiority)."""
    pairs, every = review.pairs, review.verdicts
    counts = (f"pairs won / tied / lost by majority {pairs.good} / {pairs.same} / {pairs.bad}, {{test}}; "
              f"verdicts good / same / bad {every.good} / {every.same} / {every.bad}")
    if margin is not None:
        p = noninferiority_p_value(pairs, margin)
        if p < alpha:
            return None
        n = max(pairs.good + pairs.same + pairs.bad, 1)
        test = (f"net preference {(pairs.good - pairs.bad) / n:+.3f}, non-inferiority at margin {margin}: "
                f"p = {p:.3f}, needs < {alpha}")
        return f"the reviewers do not find it as good as {against} side by side ({counts.format(test=test)})"
    p = preference_p_value(pairs)
    if pairs.good > pairs.bad and p < alpha:
        return None
    test = f"sign test p = {p:.3f}, needs < {alpha}"
    return f"the reviewers do not prefer it to {against} side by side ({counts.format(test=test)})"


def accelerated(metrics: dict, reference: dict) -> bool:
    """Whether the candidate samples in fewer steps than the model it is compared with."""
    return "steps" in metrics and "steps" in reference and metrics["steps"] < reference["steps"]


def review_record(review: Review, by: str, margin: float | None = None) -> dict:
    """The review as a version's metrics keep it (`margin`: tested for non-inferiority at that margin)."""
    gsb, pairs = review.verdicts, review.pairs
    p = preference_p_value(pairs) if margin is None else noninferiority_p_value(pairs, margin)
    return {"good": gsb.good, "same": gsb.same, "bad": gsb.bad, "superiority": gsb.superiority,
            "pairs": {"won": pairs.good, "tied": pairs.same, "lost": pairs.bad}, "p_value": p,
            "test": "sign" if margin is None else f"non-inferiority at margin {margin}", "by": by}


def record_review(row: ModelVersion, review: Review, pairs: int, min_verdicts: int,
                  alpha: float = REVIEW_ALPHA) -> str | None:
    """Write the verdicts into the version's metrics and replace its AWAITING guard with the reviewers'
    decision (non-inferiority for a faster candidate: the margin its stage recorded). Returns why the review
    cannot conclude yet (too few verdicts), else None."""
    gsb = review.verdicts
    verdicts = gsb.good + gsb.same + gsb.bad
    if verdicts < min_verdicts:
        return f"{verdicts} side-by-side verdicts on its {pairs} review pairs; the review needs {min_verdicts}"
    guards = [g for g in row.metrics.get("guard_failures", []) if not g.startswith(AWAITING)]
    margin = row.metrics.get("review_margin")
    why = review_guard(review, alpha=alpha, margin=margin)
    row.metrics = {**row.metrics, "guard_failures": guards + ([why] if why else []),
                   "review": review_record(review, "people", margin)}
    return None
