"""Training data for the preference rewards, read from the database and the blob store.

A best/worst answer over N images implies the pairs best > every other and every other > worst
(2N - 3 distinct pairs). Splits are by candidate set (a hash of its id, so the same set is always
on the same side), which keeps near-duplicate images of one set out of both sides.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from editloop.db.models import CandidateSet, ImageRecord, Preference
from editloop.models.data import edit_context, to_tensor
from editloop.store.base import BlobNotFound, BlobStore
from editloop.world.io import from_png, mask_from_png


class NotEnoughLabels(ValueError):
    """The labels cannot train a model (too few, one-sided, or their images are gone)."""


@dataclass(frozen=True)
class Pair:
    set_id: int
    prompt: str
    win: str  # blob keys
    lose: str
    source: str | None = None
    mask: str | None = None


@dataclass
class PairSet:
    train: list[Pair]
    eval: list[Pair]  # held out: the gate's score and the chance floor, never used to choose anything
    label_ids: list[int]  # the preferences they came from (lineage)
    skipped: dict[str, int]
    select: list[Pair] = field(default_factory=list)  # held out too: chooses the run's best checkpoint


def split_of(set_id: int, eval_fraction: float = 0.15, salt: str = "editloop-reward-split",
             select_fraction: float = 0.0) -> str:
    """"eval", "select" or "train" for a candidate set, by a hash of its id: a set keeps its side as labels grow.
    The eval side is the first `eval_fraction` of the hash range whatever `select_fraction` is."""
    h = int(hashlib.sha256(f"{salt}:{set_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if h < eval_fraction else "select" if h < eval_fraction + select_fraction else "train"


def pairs_from_answer(items: list[str], best: str, worst: str) -> list[tuple[str, str]]:
    out = {(best, other) for other in items if other != best}
    out |= {(other, worst) for other in items if other != worst}
    return sorted(out)


def pairs_by_label(session: Session, store: BlobStore, prefs: list[Preference]) -> Iterator[tuple[Preference,
                                                                                              list[Pair] | None]]:
    """(label, its pairs) for each label, pairs None when an image it needs is gone from the store.

    Candidate sets load in one query and each blob's existence is asked once."""
    sets = {cs.id: cs for cs in session.scalars(
        select(CandidateSet).options(selectinload(CandidateSet.items), selectinload(CandidateSet.prompt))
        .where(CandidateSet.id.in_({p.candidate_set_id for p in prefs})))}
    keys = {i: k for i, k in session.execute(select(ImageRecord.id, ImageRecord.blob_key))}
    exists = lru_cache(maxsize=None)(store.exists)
    for p in prefs:
        cs = sets[p.candidate_set_id]
        item_keys = [keys[i.image_id] for i in cs.items]
        source = keys[cs.source_image_id] if cs.source_image_id else None
        needed = [*item_keys, *(k for k in (source, cs.mask_key) if k)]
        if not all(exists(k) for k in needed):
            yield p, None
            continue
        yield p, [Pair(cs.id, cs.prompt.text, win, lose, source, cs.mask_key)
                  for win, lose in pairs_from_answer(item_keys, keys[p.best_image_id], keys[p.worst_image_id])
                  if win != lose]  # two positions can hold identical images


INSTRUCT_SET_KIND = "instruct"  # its labels train the instruction editor (Diffusion-DPO, trainers/align/dpo.py),
# not the preference rewards: an instruction is not a caption, and the rewards never see the source it edits


def reward_labels():
    """The valid labels the preference rewards learn from (a select of Preference, oldest first)."""
    return (select(Preference).join(CandidateSet, CandidateSet.id == Preference.candidate_set_id)
            .where(Preference.status == "valid", CandidateSet.kind != INSTRUCT_SET_KIND).order_by(Preference.id))


def preference_pairs(session: Session, store: BlobStore, eval_fraction: float = 0.15,
                     min_labels: int = 20, select_fraction: float = 0.0) -> PairSet:
    """Every valid preference as win/lose pairs, split by candidate set (train / select / eval, split_of).
    Raises NotEnoughLabels."""
    prefs = list(session.scalars(reward_labels()))
    result = PairSet([], [], [], {"missing image": 0})
    for p, pairs in pairs_by_label(session, store, prefs):
        if pairs is None:
            result.skipped["missing image"] += 1
            continue
        side = getattr(result, split_of(p.candidate_set_id, eval_fraction, select_fraction=select_fraction))
        side.extend(pairs)
        result.label_ids.append(p.id)
    if len(result.label_ids) < min_labels:
        raise NotEnoughLabels(f"{len(result.label_ids)} usable best/worst labels; at least {min_labels} are needed "
                              f"(skipped: {result.skipped})")
    if not result.eval or not result.train:
        raise NotEnoughLabels(f"the labels cover too few candidate sets to hold some out "
                              f"({len(result.train)} train pairs, {len(result.eval)} held-out pairs)")
    return result


def newest_pairs(session: Session, store: BlobStore, n_labels: int) -> list[Pair]:
    """The pairs of the newest `n_labels` valid labels (for drift checks), images that still exist only."""
    prefs = list(session.scalars(reward_labels().order_by(None).order_by(Preference.id.desc()).limit(n_labels)))
    return [pair for _, pairs in pairs_by_label(session, store, prefs) if pairs for pair in pairs]


class ImageCache:
    """Blob key -> decoded image, loaded once (label sets reuse images many times)."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._get = lru_cache(maxsize=65536)(self._load)
        self._mask = lru_cache(maxsize=4096)(lambda key: mask_from_png(self.store.get(key), size=None))

    def _load(self, key: str) -> np.ndarray:
        try:
            return from_png(self.store.get(key), key, size=None)
        except BlobNotFound as exc:
            raise NotEnoughLabels(f"image {key} is referenced by a label but missing from the blob store") from exc

    def image(self, key: str) -> np.ndarray:
        return self._get(key)

    def mask(self, key: str) -> np.ndarray:
        return self._mask(key)


@dataclass
class PairBatch:
    prompts: list[str]
    win: torch.Tensor
    lose: torch.Tensor
    source: torch.Tensor | None
    mask: torch.Tensor | None


def make_batch(pairs: list[Pair], cache: ImageCache) -> PairBatch:
    win = to_tensor([cache.image(p.win) for p in pairs])
    lose = to_tensor([cache.image(p.lose) for p in pairs])
    source, mask = edit_context([cache.image(p.source) if p.source else None for p in pairs],
                                [cache.mask(p.mask) if p.mask else None for p in pairs], *win.shape[-2:])
    return PairBatch([p.prompt for p in pairs], win, lose, source, mask)


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def mirror_prompt(prompt: str) -> str:
    """The prompt of the mirrored image: "left" and "right" swap places."""
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", prompt)


def mirror_half(batch: PairBatch, rng: np.random.Generator) -> PairBatch:
    """Mirror a random half of the pairs left-right (both images, the source and the mask together, the
    prompt's left/right swapped): a preference does not change when the whole scene is seen in a mirror."""
    flip = rng.random(len(batch.prompts)) < 0.5
    idx = torch.from_numpy(flip)

    def apply(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.where(idx[:, None, None, None], x.flip(-1), x)

    prompts = [mirror_prompt(p) if f else p for p, f in zip(batch.prompts, flip, strict=True)]
    return PairBatch(prompts, apply(batch.win), apply(batch.lose), apply(batch.source), apply(batch.mask))


def endless_batches(pairs: list[Pair], batch_size: int, cache: ImageCache, seed: int,
                    mirror: bool = False) -> Iterator[PairBatch]:
    """Seeded batches of `pairs`; with `mirror`, each batch has a random half mirrored (mirror_half)."""
    from trainers.reward.loop import shuffled_batches

    rng = np.random.default_rng([seed, 1])
    for chunk in shuffled_batches(pairs, batch_size, seed):
        batch = make_batch(chunk, cache)
        yield mirror_half(batch, rng) if mirror else batch
