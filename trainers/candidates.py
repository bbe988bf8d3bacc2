"""Generate a candidate set: N images for a prompt, N edits of a source and mask, or N edits of a source by an
instruction.

A plain function the Celery task wraps: it receives a session and a store, generates, stores the images
and records the generation and the candidate set (with the model name and version that made them).
Idempotent: the same `idempotency_key` returns the set made the first time.

Text-to-image sets come from the base generator. Edit sets come from an editor chosen by `editor`: the
one the editor service serves (the promoted feedback-learning version, else the base inpainting model),
"base", or any registered editor version, a refused candidate included. Instruction-edit sets ("instruct":
the prompt is the instruction) come from the instruction editor `editor` names the same way: the promoted
instruct version (an alignment round's or a DPO run's), "base" (the committed one), or any registered one.
Labelling the samples of the model being fine-tuned is what keeps a learned reward accurate where fine-tuning
takes the model (BENCHMARKS.md, "what PeFL does to its reward": 0.715 accurate on the base's pairs, 0.459 on the
pairs PeFL creates); the base's samples alone teach it nothing about the fine-tuned model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import CandidateItem, CandidateSet
from editloop.guidances import by_guidance, check_guidances
from editloop.models.pipeline_io import inpaint_inputs, per_image_generators, pipeline_to_uint8
from editloop.models.zoo import load_pipeline, set_scheduler
from editloop.records import get_or_create_prompt, record_generation
from editloop.settings import Settings
from editloop.store.base import BlobStore
from editloop.world.io import from_png, mask_from_png, to_png

KINDS = ("t2i", "inpaint", "instruct")


@dataclass(frozen=True)
class CandidateSpec:
    prompt: str
    n: int = 4
    kind: str = "t2i"  # t2i | inpaint | instruct
    source_key: str | None = None  # for inpaint: blob keys of the source image and mask; instruct: the source
    mask_key: str | None = None
    steps: int | None = None  # None: the model's default (an 8-step editor says 8 in its editloop.json)
    guidance: float = 4.0
    guidances: tuple[float, ...] | None = None  # per image, cycled over the set (None: every image at `guidance`)
    seed: int = 0
    scheduler: str = "ddim"
    idempotency_key: str | None = None
    editor: str | None = None  # inpaint, instruct: None = the served editor, "base", or a registered version

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {list(KINDS)}, got {self.kind!r}")
        if not 2 <= self.n <= 16:
            raise ValueError(f"`n` must be in 2..16 (a candidate set compares images), got {self.n}")
        if not self.prompt.strip():
            raise ValueError("`prompt` is empty")
        if self.kind == "inpaint" and not (self.source_key and self.mask_key):
            raise ValueError("`source_key` and `mask_key` are required for an inpaint candidate set")
        if self.kind == "instruct":
            from editloop.world.instructions import check_instruction

            check_instruction(self.prompt, "prompt")  # the instruction
            if not self.source_key or self.mask_key:
                raise ValueError("an instruct candidate set takes `source_key` (the image to edit) and no "
                                 f"`mask_key`, got source_key={self.source_key!r}, mask_key={self.mask_key!r}")
        if self.kind == "t2i" and self.editor is not None:
            raise ValueError(f"`editor` applies to inpaint and instruct candidate sets only, got "
                             f"editor={self.editor!r} with kind 't2i'")
        if self.steps is not None and not 1 <= self.steps <= 100:
            raise ValueError(f"`steps` must be in 1..100, got {self.steps}")
        check_guidances(self.guidances, "guidances")

    def image_guidances(self) -> list[float]:
        """Each image's text guidance: `guidances` cycled over the set, else `guidance` for all."""
        values = tuple(self.guidances) if self.guidances else (self.guidance,)
        return [float(values[i % len(values)]) for i in range(self.n)]


@dataclass(frozen=True)
class CandidateModel:
    """The model a candidate set is generated with, as the generation record names it."""

    name: str
    version: str
    path: Path
    default_steps: int


def candidate_model(spec: CandidateSpec, session: Session, store: BlobStore, settings: Settings) -> CandidateModel:
    """The generator for a t2i set; for an inpaint set the editor `spec.editor` names (see the module doc)."""
    from editloop.models.card import SamplingDefaults
    from editloop.models.model_dir import model_version
    from editloop.registry import PromotionRefused, editor_model_dir

    if spec.kind == "t2i":
        name, version, path = "base-t2i", model_version(settings.generator_model), settings.generator_model
    elif spec.kind == "instruct":
        name, version, path = instruct_model(spec.editor, session, store, settings)
    elif spec.editor == "base":
        name, version, path = "base-inpaint", model_version(settings.editor_model), settings.editor_model
    else:
        try:
            name, version, path, _ = editor_model_dir(session, store, settings.editor_model,
                                                      settings.state_dir / "models", spec.editor)
        except PromotionRefused as exc:
            raise ValueError(f"`editor` {spec.editor!r}: {exc}") from exc
    return CandidateModel(name, version, path, SamplingDefaults.from_dir(path).steps)


def instruct_model(editor: str | None, session: Session, store: BlobStore, settings: Settings
                   ) -> tuple[str, str, Path]:
    """(name, version, directory) of the instruction editor `editor` names (module docstring)."""
    from editloop.models.card import has_card
    from editloop.models.model_dir import model_version
    from editloop.registry import PromotionRefused, instruct_model_dir

    if editor == "base":
        if not has_card(settings.instruct_model):
            raise ValueError(f"`editor` 'base': {settings.instruct_model} holds no instruction editor")
        return "default-instruct", model_version(settings.instruct_model), settings.instruct_model
    try:
        found = instruct_model_dir(session, store, settings.instruct_model, settings.state_dir / "models", editor)
    except PromotionRefused as exc:
        raise ValueError(f"`editor` {editor!r}: {exc}") from exc
    if found is None:
        raise ValueError(f"no instruction editor: none is promoted and {settings.instruct_model} holds none")
    return found[0], found[1], found[2]


@lru_cache(maxsize=2)
def cached_pipeline(path: str, kind: str, device: str | None):
    """One pipeline (an InstructEditor for "instruct") per worker process, loaded on first use."""
    if kind == "instruct":
        from editloop.models.instruct import load_instruct_editor

        return load_instruct_editor(path, device=device)
    return load_pipeline(Path(path), kind, device=device)


def generate_images(pipe, spec: CandidateSpec, store: BlobStore, steps: int) -> tuple[list[np.ndarray],
                                                                                   bytes | None, bytes | None]:
    """Image i with seed `spec.seed + i` at its own guidance (one sampler call per distinct guidance)."""
    set_scheduler(pipe, spec.scheduler)
    source_png = mask_png = image = mask = None
    if spec.kind == "inpaint":
        source_png, mask_png = store.get(spec.source_key), store.get(spec.mask_key)
        image, mask = from_png(source_png, "source"), mask_from_png(mask_png)

    def make(guidance: float, idx: list[int]) -> np.ndarray:
        kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                      generator=per_image_generators(spec.seed + i for i in idx))
        if image is not None:
            image_t, mask_t = inpaint_inputs(np.stack([image] * len(idx)), np.stack([mask] * len(idx)))
            kwargs.update(image=image_t, mask_image=mask_t, height=image.shape[0], width=image.shape[1])
        with torch.inference_mode():
            return pipeline_to_uint8(pipe([spec.prompt] * len(idx), **kwargs).images)

    out = by_guidance(spec.image_guidances(), make)
    return out, source_png, mask_png


def instruct_images(editor, spec: CandidateSpec, store: BlobStore, steps: int) -> tuple[list[np.ndarray], bytes,
                                                                                      None]:
    """`spec.n` edits of the source by the instruction (each at its text guidance, the editor's image guidance),
    one seed each."""
    from editloop.models.instruct_sampling import edit_images

    source_png = store.get(spec.source_key)
    image = from_png(source_png, "source", size=editor.native_size)
    out = by_guidance(spec.image_guidances(), lambda guidance, idx: edit_images(
        editor, np.stack([image] * len(idx)), [spec.prompt] * len(idx), [spec.seed + i for i in idx], steps=steps,
        text_guidance=guidance))
    return out, source_png, None


def run(spec: CandidateSpec, session: Session, store: BlobStore, settings: Settings) -> int:
    """Make (or find) the candidate set; returns its id. The caller commits."""
    spec.check()
    if spec.idempotency_key:
        found = session.scalars(select(CandidateSet).where(CandidateSet.idempotency_key == spec.idempotency_key))
        existing = found.one_or_none()
        if existing is not None:
            return existing.id
    model = candidate_model(spec, session, store, settings)
    steps = spec.steps or model.default_steps
    pipe = cached_pipeline(str(model.path), spec.kind, settings.device)
    if spec.kind == "instruct":
        images, source_png, mask_png = instruct_images(pipe, spec, store, steps)
    else:
        images, source_png, mask_png = generate_images(pipe, spec, store, steps)
    pngs = [to_png(im) for im in images]
    gen, _ = record_generation(
        session, store, kind=spec.kind, prompt=spec.prompt, pngs=pngs, shape=images[0].shape[:2],
        model_name=model.name, model_version=model.version, steps=steps, guidance=spec.guidance,
        seed=spec.seed, scheduler=spec.scheduler, source_png=source_png, mask_png=mask_png,
        params={"guidances": spec.image_guidances()} if spec.guidances else None,
    )
    cs = CandidateSet(kind=spec.kind, prompt=get_or_create_prompt(session, spec.prompt), generation_id=gen.id,
                      source_image_id=gen.source_image_id, mask_key=gen.mask_key,
                      idempotency_key=spec.idempotency_key)
    cs.items = [CandidateItem(position=gi.index, image=gi.image) for gi in gen.images]
    session.add(cs)
    session.flush()
    return cs.id
