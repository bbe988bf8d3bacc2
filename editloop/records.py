"""Record a generation: images into the blob store, rows into the database (one transaction).

Blobs are written first; they are content-addressed and immutable, so a crash between the two
steps leaves at most an unreferenced blob, never a row pointing at a missing image.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import Generation, GenerationImage, ImageRecord, Prompt
from editloop.store.base import BlobStore


def get_or_create_prompt(session: Session, text: str) -> Prompt:
    prompt = session.scalars(select(Prompt).where(Prompt.text == text)).one_or_none()
    if prompt is None:
        prompt = Prompt(text=text)
        session.add(prompt)
        session.flush()
    return prompt


def get_or_create_image(session: Session, key: str, width: int, height: int) -> ImageRecord:
    image = session.scalars(select(ImageRecord).where(ImageRecord.blob_key == key)).one_or_none()
    if image is None:
        image = ImageRecord(blob_key=key, width=width, height=height)
        session.add(image)
        session.flush()
    return image


def record_generation(
    session: Session, store: BlobStore, *, kind: str, prompt: str, pngs: list[bytes], shape: tuple[int, int],
    model_name: str, model_version: str, steps: int, guidance: float, seed: int, scheduler: str,
    source_png: bytes | None = None, mask_png: bytes | None = None, params: dict[str, Any] | None = None,
) -> tuple[Generation, list[str]]:
    """Store images and write the generation rows in the caller's transaction."""
    keys = [store.put(p, "image/png") for p in pngs]
    source_key = store.put(source_png, "image/png") if source_png else None
    mask_key = store.put(mask_png, "image/png") if mask_png else None
    h, w = shape
    gen = Generation(
        kind=kind, prompt=get_or_create_prompt(session, prompt) if prompt else None,
        model_name=model_name, model_version=model_version, steps=steps, guidance=guidance, seed=seed,
        scheduler=scheduler, mask_key=mask_key, params=params or {},
        source_image_id=get_or_create_image(session, source_key, w, h).id if source_key else None,
    )
    gen.images = [GenerationImage(index=i, image=get_or_create_image(session, k, w, h)) for i, k in enumerate(keys)]
    session.add(gen)
    session.flush()
    return gen, keys
