"""Side-by-side review of a candidate editor against the served one, as ByteEdit evaluates (GSB).

The reward's score alone is a poor gate: on the Shapes World it rose while a drifting fine-tune got
worse in the annotators' eyes (BENCHMARKS.md, "On the trailing base"). A review shows the annotators
each held-out edit by both models side by side (good / same / bad), and a candidate the reviewers do not
prefer (each edit counted once, by its reviewers' majority; a one-sided sign test of edits won against
edits lost at level 0.05: editloop/labels/review.py) is not promoted. In this world the reviewers are
the world's simulated annotators (a panel sharing the platform's default taste, with their own noise
seed, so they are not the benchmark's panel); with people, the same pairs would go to Label Studio as
side-by-side tasks (the label kernel parses those: editloop/labels/results.py). The same verdicts, on a
validation set apart from the gate's, score snapshots for checkpoint selection (selection.py).
"""

from __future__ import annotations

import numpy as np

from editloop.labels.review import Review, majority
from editloop.labels.stats import GSB
from editloop.world.annotators import DEFAULT_WEIGHTS, panel
from trainers.feedback.evaluate import panel_verdicts, utilities
from trainers.feedback.examples import FeedbackExample

# none: the gate reads the rewards and the judge only; panel: the world's simulated reviewers answer at once;
# people: the held-out pairs go to Label Studio and `editloop models review` decides (editloop/labels/review.py)
REVIEWS = ("none", "panel", "people")
REVIEWER_SEED = 11  # the benchmark's panel uses seed 7


def check_review(review: str) -> None:
    if review not in REVIEWS:
        raise ValueError(f"`review` must be one of {list(REVIEWS)}, got {review!r}")


def side_by_side(candidate: np.ndarray, served: np.ndarray, examples: list[FeedbackExample]) -> Review:
    """The reviewers' verdicts on candidate vs served, each pair of images edited from the same example."""
    if len(candidate) != len(served) or len(candidate) != len(examples):
        raise ValueError(f"side-by-side review needs one image per example from each model; got "
                         f"{len(candidate)} candidate, {len(served)} served, {len(examples)} examples")
    return majority(panel_verdicts(utilities(candidate, examples, DEFAULT_WEIGHTS),
                                   utilities(served, examples, DEFAULT_WEIGHTS),
                                   panel(weights=DEFAULT_WEIGHTS, seed=REVIEWER_SEED)))


def net_preference(gsb: GSB) -> float:
    """(good - bad) / verdicts, in [-1, 1]: 0 when the reviewers are indifferent."""
    total = gsb.good + gsb.same + gsb.bad
    return (gsb.good - gsb.bad) / total if total else 0.0
