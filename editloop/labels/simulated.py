"""Candidate sets and simulated best/worst labels written straight to the database.

For unit tests and learning-quality benchmarks, where going through Label Studio would only add
time (the integration tests and the demo do go through it). Candidate images are either renders of
the world's quality mix (what a weak generator gives, with a known scene behind each prompt) or
images a model generated (ByteEdit's data flow: experts label the generator's own outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from editloop.db.models import CandidateItem, CandidateSet, ImageRecord, Preference
from editloop.records import get_or_create_image, get_or_create_prompt
from editloop.store.base import BlobStore
from editloop.world import cell_mask, render, sample_scene
from editloop.world.annotators import SimulatedAnnotator, intended_scene
from editloop.world.io import from_png, mask_to_png, to_png
from editloop.world.render import sample_quality


def add_candidate_set(session: Session, store: BlobStore, prompt: str, images: list[np.ndarray], kind: str,
                      source: np.ndarray | None = None, mask: np.ndarray | None = None) -> int:
    """One candidate set of `images` for `prompt` (with its source image and mask for an edit set); returns its id."""
    cs = CandidateSet(kind=kind, prompt=get_or_create_prompt(session, prompt))
    if source is not None:  # an edit set's source (with its mask; an instruction-edit set has none)
        cs.source_image_id = get_or_create_image(session, store.put(to_png(source)), source.shape[1],
                                                 source.shape[0]).id
    if source is not None and mask is not None:
        cs.mask_key = store.put(mask_to_png(mask))
    for position, image in enumerate(images):
        record = get_or_create_image(session, store.put(to_png(image)), image.shape[1], image.shape[0])
        cs.items.append(CandidateItem(position=position, image_id=record.id))
    session.add(cs)
    session.flush()
    return cs.id


def render_candidate_sets(sessions: sessionmaker[Session], store: BlobStore, n_sets: int, n_images: int = 4,
                          seed: int = 0, kind: str = "t2i", max_q: float = 1.0) -> list[int]:
    """`n_sets` candidate sets of `n_images` renders at q ~ U[0, max_q]; edit sets get a source and cell mask."""
    rng = np.random.default_rng(seed)
    ids = []
    with sessions.begin() as session:
        for _ in range(n_sets):
            scene = sample_scene(rng)
            images = [render(scene, sample_quality(rng, len(scene.objects), q=float(rng.uniform(0, max_q))))
                      for _ in range(n_images)]
            edit = kind != "t2i"
            ids.append(add_candidate_set(session, store, scene.caption, images, kind,
                                         render(scene) if edit else None,
                                         cell_mask(scene.objects[0].position) if edit else None))
    return ids


def render_instruct_sets(sessions: sessionmaker[Session], store: BlobStore, n_sets: int, n_images: int = 4,
                         seed: int = 0) -> list[int]:
    """`n_sets` instruction-edit sets (kind "instruct": the source render, the instruction as the prompt) of
    `n_images` renders each: the edit's target scene at q ~ U[0, 1], one of them left undone (the source again, as
    an editor that ignores the instruction would give)."""
    from trainers.align.pairs import edit_specs

    rng = np.random.default_rng(seed)
    ids = []
    with sessions.begin() as session:
        for edit in edit_specs(n_sets, seed):
            images = [render(edit.target, sample_quality(rng, len(edit.target.objects), q=float(rng.uniform(0, 1))))
                      for _ in range(n_images - 1)]
            images.insert(int(rng.integers(n_images)), render(edit.source, sample_quality(
                rng, len(edit.source.objects), q=float(rng.uniform(0, 1)))))
            ids.append(add_candidate_set(session, store, edit.instruction, images, "instruct", render(edit.source)))
    return ids


def image_candidate_sets(sessions: sessionmaker[Session], store: BlobStore, prompts: list[str],
                         images: np.ndarray, kind: str = "inpaint", sources: np.ndarray | None = None,
                         masks: np.ndarray | None = None) -> list[int]:
    """One candidate set per prompt holding the given images (S,N,H,W,3 uint8, N >= 2 per prompt), with each
    set's edit source (S,H,W,3) and mask (S,H,W) when given."""
    if images.ndim != 5 or images.shape[0] != len(prompts) or images.shape[1] < 2 or images.shape[-1] != 3:
        raise ValueError(f"`images` must be (len(prompts)={len(prompts)}, N>=2, H, W, 3), got {images.shape}")
    if (sources is None) != (masks is None):
        raise ValueError("`sources` and `masks` go together: give both or neither")
    if sources is not None and (sources.shape != (images.shape[0], *images.shape[2:])
                                or masks.shape != images.shape[:1] + images.shape[2:4]):
        raise ValueError(f"`sources` must be {(images.shape[0], *images.shape[2:])} and `masks` "
                         f"{images.shape[:1] + images.shape[2:4]}, got {sources.shape} and {masks.shape}")
    with sessions.begin() as session:
        return [add_candidate_set(session, store, prompt, list(candidates), kind,
                                  None if sources is None else sources[i], None if masks is None else masks[i])
                for i, (prompt, candidates) in enumerate(zip(prompts, images))]


@dataclass(frozen=True)
class LabelPlan:
    annotators: list[SimulatedAnnotator]
    overlap: int = 1  # annotators per set, taken round-robin


def simulate_labels(sessions: sessionmaker[Session], store: BlobStore, set_ids: list[int], plan: LabelPlan) -> int:
    """Each set labelled by `overlap` annotators (round-robin); one valid Preference per answer. Returns count."""
    made = 0
    with sessions.begin() as session:
        sets = session.scalars(select(CandidateSet).options(selectinload(CandidateSet.items),
                                                            selectinload(CandidateSet.prompt))
                               .where(CandidateSet.id.in_(set_ids)).order_by(CandidateSet.id))
        keys = {i: k for i, k in session.execute(select(ImageRecord.id, ImageRecord.blob_key))}
        for i, cs in enumerate(sets):
            images = [from_png(store.get(keys[item.image_id])) for item in cs.items]
            source = from_png(store.get(keys[cs.source_image_id])) if cs.source_image_id else None
            intended = intended_scene(cs.prompt.text, source)
            for j in range(plan.overlap):
                annotator = plan.annotators[(i + j) % len(plan.annotators)]
                best, worst = annotator.best_worst(images, intended)
                session.add(Preference(candidate_set_id=cs.id, best_image_id=cs.items[best].image_id,
                                       worst_image_id=cs.items[worst].image_id, annotator=f"sim:{annotator.name}"))
                made += 1
    return made
