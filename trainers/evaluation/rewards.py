"""A reward model measured on held-out data of its kind, and on a model's own samples (reward drift).

- aesthetic: pairwise accuracy on the labelled held-out pairs in the database (the candidate sets the training
  split holds out, trainers/reward/data.split_of), and its drift figure on the base editor's samples;
- alignment: accuracy on world captions and instructions against one-attribute hard negatives, from a seed no
  training run draws from (ALIGNMENT_SEED), per attribute;
- coherence: pixel AUC of real against inpainted pixels on the base editor's composites from ALIGNMENT_SEED.

Reward drift (`eval reward-drift`): a preference reward's accuracy on pairs of one editor's own samples (each
world example edited with two seeds), against the world's annotator taste, over the pairs whose utilities differ by
at least the panel's "same" margin: how far the reward can still be trusted where feedback learning took the
editor. A reward that scores its own tuned editor's samples at chance is being exploited (bench/reward_hacking.py
measured this for PeFL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from editloop.world.annotators import DEFAULT_WEIGHTS, reversed_weights, utility

ALIGNMENT_SEED = 880_000
TASTES = {"default": DEFAULT_WEIGHTS, "reversed": reversed_weights()}


def taste_weights(name: str) -> dict[str, float]:
    if name not in TASTES:
        raise ValueError(f"`--taste` must be one of {sorted(TASTES)}, got {name!r}")
    return TASTES[name]


def agreement(score_a: np.ndarray, score_b: np.ndarray, u_a: np.ndarray, u_b: np.ndarray, margin: float
              ) -> dict[str, float | int | list[int]]:
    """Share of pairs the score orders as the utility does, over pairs with |u_a - u_b| >= margin (ties half)."""
    keep = np.abs(u_a - u_b) >= margin
    hits = (np.sign(score_a - score_b) == np.sign(u_a - u_b)).astype(float)
    hits[(score_a == score_b)] = 0.5
    n = int(keep.sum())
    acc = float(hits[keep].mean()) if n else float("nan")
    return {"accuracy": acc, "pairs": n, "se": float(np.sqrt(acc * (1 - acc) / n)) if n else float("nan"),
            "per_pair": [int(h) if k else -1 for h, k in zip(hits, keep)]}


def drift(kind: str, rewards, pipe, suite, steps: int, guidance: float, taste: str = "default") -> dict:
    """The reward `kind`'s agreement with the taste on pairs of `pipe`'s two samples of each world example."""
    from trainers.evaluation.editors import EVAL_SEED, sample_inpaint
    from trainers.feedback.evaluate import SAME_MARGIN, image_rewards

    if kind not in rewards.preference:
        raise ValueError(f"reward drift measures a preference reward (aesthetic, alignment), got {kind!r}")
    if not suite.judged:
        raise ValueError("reward drift needs a world suite (the taste scores the world's scenes)")
    weights = taste_weights(taste)
    a = sample_inpaint(pipe, suite, steps, guidance).outputs
    b = sample_inpaint(pipe, suite, steps, guidance, seed=EVAL_SEED + 10**6).outputs  # the same, other seeds
    targets = [ex.target for ex in suite.judged]
    u_a = np.array([utility(img, t, weights) for img, t in zip(a, targets)])
    u_b = np.array([utility(img, t, weights) for img, t in zip(b, targets)])
    s_a = image_rewards(rewards, a, suite.items)[kind]
    s_b = image_rewards(rewards, b, suite.items)[kind]
    return agreement(s_a, s_b, u_a, u_b, SAME_MARGIN) | {"taste": taste, "mean_utility": float(u_a.mean())}


def labelled_accuracy(sessions, store, model, tokenizer) -> dict:
    """Pairwise accuracy on the database's held-out labelled pairs (no labels: pairs 0, accuracy NaN)."""
    from trainers.reward.aesthetic import pairwise_accuracy
    from trainers.reward.data import ImageCache, NotEnoughLabels, preference_pairs

    try:
        with sessions() as s:
            pairs = preference_pairs(s, store, min_labels=1)
    except NotEnoughLabels:
        return {"labelled_pairs": 0}
    acc = pairwise_accuracy(model, tokenizer, pairs.eval, ImageCache(store))
    return {"labelled_pairs": len(pairs.eval), "labelled_accuracy": acc,
            "labelled_sets": len({p.set_id for p in pairs.eval})}


def alignment_accuracy(model, tokenizer, n: int) -> dict:
    from trainers.reward.alignment import accuracy_by_attribute, mixed_examples

    by_attr = accuracy_by_attribute(model, tokenizer, mixed_examples(n, ALIGNMENT_SEED, 0.5))
    return {"accuracy": by_attr["all"], **{f"accuracy_{k}": v for k, v in by_attr.items() if k != "all"}, "n": n}


def coherence_auc(model, base_dir: Path, n: int, steps: int) -> dict:
    from editloop.models.zoo import load_pipeline
    from trainers.reward.coherence import coherence_examples, example_wins, pixel_auc

    examples = coherence_examples(load_pipeline(base_dir, "inpaint", device="cpu", dtype="fp32"), n,
                                  ALIGNMENT_SEED, steps)
    wins, units = example_wins(model, examples)
    return {"pixel_auc": pixel_auc(model, examples), "composites_above_half": wins, "n": units}
