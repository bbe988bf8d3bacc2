"""Edit pairs: Shapes World edit specs, the weak generator's pairs (text-to-image with shared noise and
masked latent blending) and the editor's own pairs in later rounds.

The world gives each pair its instruction, the source and target captions and the edit region; the
images are all generated. The world's renders are never training targets (they are used only by the
judge at evaluation time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from tqdm import tqdm

from editloop.models.data import to_uint8
from editloop.models.instruct import InstructEditor
from editloop.models.instruct_sampling import edit_images
from editloop.models.pipeline_io import encode_texts, per_image_generators, pipeline_to_uint8
from editloop.world.edits import EDIT_KINDS, Edit, make_edit
from editloop.world.scene import Scene, sample_scene


def edit_specs(n: int, seed: int, kinds: tuple[str, ...] = EDIT_KINDS) -> list[Edit]:
    """`n` edits cycling through `kinds` (balanced), each from its own seeded stream."""
    edits: list[Edit] = []
    k = 0
    while len(edits) < n:
        kind = kinds[len(edits) % len(kinds)]
        rng = np.random.default_rng([seed, k])
        k += 1
        objects = {"remove": int(rng.integers(2, 4)), "add": int(rng.integers(1, 3))}.get(kind)
        try:
            edits.append(make_edit(sample_scene(rng, objects), kind, rng))
        except ValueError:  # e.g. no free shape to reshape into: draw another scene
            continue
    return edits


@dataclass
class Pairs:
    """Training pairs for an instruction editor (uint8 images, one row per pair)."""

    sources: np.ndarray  # N,H,W,3
    targets: np.ndarray  # N,H,W,3
    masks: np.ndarray  # N,H,W {0, 1}: the edit region
    instructions: list[str]
    kinds: list[str]
    source_scenes: list[str]  # Scene JSON: what the source caption says
    target_scenes: list[str]
    origin: list[str] = field(default_factory=list)  # which generator made the pair

    def __len__(self) -> int:
        return len(self.instructions)

    def select(self, keep: np.ndarray) -> Pairs:
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return Pairs(self.sources[idx], self.targets[idx], self.masks[idx], pick(self.instructions),
                     pick(self.kinds), pick(self.source_scenes), pick(self.target_scenes), pick(self.origin))

    def scenes(self, which: str) -> list[Scene]:
        return [Scene.from_json(s) for s in (self.source_scenes if which == "source" else self.target_scenes)]

    def save(self, path: Path) -> Path:
        np.savez_compressed(path, sources=self.sources, targets=self.targets, masks=self.masks,
                            instructions=np.array(self.instructions), kinds=np.array(self.kinds),
                            source_scenes=np.array(self.source_scenes), target_scenes=np.array(self.target_scenes),
                            origin=np.array(self.origin))
        return path

    @classmethod
    def load(cls, path: Path) -> Pairs:
        z = np.load(path)
        text = lambda k: [str(x) for x in z[k]]  # noqa: E731
        return cls(z["sources"], z["targets"], z["masks"], text("instructions"), text("kinds"),
                   text("source_scenes"), text("target_scenes"), text("origin"))

    @classmethod
    def concat(cls, parts: list[Pairs]) -> Pairs:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no pairs to concatenate")
        join = lambda name: [x for p in parts for x in getattr(p, name)]  # noqa: E731
        return cls(np.concatenate([p.sources for p in parts]), np.concatenate([p.targets for p in parts]),
                   np.concatenate([p.masks for p in parts]), join("instructions"), join("kinds"),
                   join("source_scenes"), join("target_scenes"), join("origin"))


def latent_region(masks: np.ndarray, latent_size: int, dilate: int = 1) -> torch.Tensor:
    """Edit masks (N,H,W) at latent resolution (N,1,h,w), grown by `dilate` latent pixels."""
    m = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None]
    m = F.adaptive_max_pool2d(m, latent_size)
    if dilate:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return m


@torch.no_grad()
def weak_pairs_batch(pipe, edits: list[Edit], seeds: list[int], steps: int = 12, guidance: float = 4.0,
                     blend_until: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Source and target images from the text-to-image model: the two captions share the initial noise,
    and for the first `blend_until` of the steps the target's latents outside the (dilated) edit region
    are replaced by the source's (blended latent diffusion), so unchanged content stays put."""
    n = len(edits)
    dev = pipe.unet.device
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=dev)
    size = pipe.unet.config.sample_size
    text = encode_texts(pipe.tokenizer, pipe.text_encoder,
                        [e.source.caption for e in edits] + [e.target.caption for e in edits])
    empty = encode_texts(pipe.tokenizer, pipe.text_encoder, [""]).expand(2 * n, -1, -1)
    shape = (pipe.unet.config.in_channels, size, size)
    z = torch.stack([torch.randn(shape, generator=g) for g in per_image_generators(seeds)]).to(dev)
    latents = torch.cat([z, z]) * scheduler.init_noise_sigma
    region = latent_region(np.stack([e.mask for e in edits]), size).to(dev)
    blend_steps = int(round(blend_until * steps))
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(latents, t).repeat(2, 1, 1, 1)
        e_none, e_text = pipe.unet(x, t, torch.cat([empty, text])).sample.chunk(2)
        latents = scheduler.step(e_none + guidance * (e_text - e_none), t, latents).prev_sample
        if i < blend_steps:
            src, tgt = latents[:n], latents[n:]
            latents = torch.cat([src, region * tgt + (1 - region) * src])
    images = to_uint8(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample)
    return images[:n], images[n:]


def _pairs_from(edits: list[Edit], sources: np.ndarray, targets: np.ndarray, origin: str) -> Pairs:
    return Pairs(sources, targets, np.stack([e.mask for e in edits]), [e.instruction for e in edits],
                 [e.kind for e in edits], [e.source.to_json() for e in edits], [e.target.to_json() for e in edits],
                 [origin] * len(edits))


def weak_pairs(pipe, edits: list[Edit], seed: int, steps: int = 12, guidance: float = 4.0,
               blend_until: float = 1.0, batch: int = 32, desc: str = "weak pairs") -> Pairs:
    """Pairs for `edits` from the text-to-image model (the weak generator), in batches with a progress bar."""
    srcs, tgts = [], []
    for i in tqdm(range(0, len(edits), batch), desc=desc, unit="batch", disable=None):
        chunk = edits[i : i + batch]
        s, t = weak_pairs_batch(pipe, chunk, [seed + i + k for k in range(len(chunk))], steps, guidance, blend_until)
        srcs.append(s)
        tgts.append(t)
    return _pairs_from(edits, np.concatenate(srcs), np.concatenate(tgts), "t2i")


@torch.no_grad()
def generated_sources(pipe, edits: list[Edit], seed: int, steps: int = 12, guidance: float = 4.0,
                      batch: int = 32) -> np.ndarray:
    """Source images from the text-to-image model (the editor's inputs in later rounds)."""
    out = []
    for i in range(0, len(edits), batch):
        chunk = edits[i : i + batch]
        g = per_image_generators([seed + i + k for k in range(len(chunk))])
        res = pipe([e.source.caption for e in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=g, output_type="np", height=64, width=64).images
        out.append(pipeline_to_uint8(res))
    return np.concatenate(out)


def candidate_specs(n_rows: int, n_specs: int) -> np.ndarray:
    """The spec index of each of `editor_pairs`'s rows: candidate c of spec i is row c * n_specs + i."""
    if n_rows % n_specs:
        raise ValueError(f"{n_rows} candidate rows are not a whole number of candidates for {n_specs} specs")
    return np.arange(n_rows) % n_specs


def editor_pairs(editor: InstructEditor, edits: list[Edit], sources: np.ndarray, seed: int, candidates: int = 2,
                 steps: int | None = None, text_guidance: float | None = None,
                 image_guidance: float | None = None, batch: int = 32, desc: str = "editor pairs") -> Pairs:
    """`candidates` edits per (source, instruction) by the editor itself, each from its own seed; rows are
    candidate-major (`candidate_specs`)."""
    rows = [(i, c) for c in range(candidates) for i in range(len(edits))]
    outs = []
    for b in tqdm(range(0, len(rows), batch), desc=desc, unit="batch", disable=None):
        chunk = rows[b : b + batch]
        outs.append(edit_images(editor, sources[[i for i, _ in chunk]], [edits[i].instruction for i, _ in chunk],
                                [seed + 1000 * c + i for i, c in chunk], steps, text_guidance, image_guidance))
    picked = [edits[i] for i, _ in rows]
    return _pairs_from(picked, sources[[i for i, _ in rows]], np.concatenate(outs), f"editor:{editor.arch}")


def rendered_sources(edits: list[Edit], seed: int) -> np.ndarray:
    """Source images as "photos" of the source scenes: the world's renders with the quality mix's
    degradations (q ~ U[0, 1]). They are inputs only, never training targets."""
    from editloop.world.render import render, sample_quality

    out = []
    for k, e in enumerate(edits):
        rng = np.random.default_rng([seed, 7, k])
        out.append(render(e.source, sample_quality(rng, len(e.source.objects), float(rng.uniform()))))
    return np.stack(out)


def inpaint_pairs(pipe, edits: list[Edit], sources: np.ndarray, seed: int, steps: int = 12,
                  guidance: float = 4.0, batch: int = 32, desc: str = "inpaint pairs") -> Pairs:
    """Targets by the inpainting model (initialised from the text-to-image model): the edit region of each
    source regenerated from the target caption, the rest kept (UltraEdit's region-based pairs)."""
    from editloop.models.evaluate import inpaint

    outs = []
    for i in tqdm(range(0, len(edits), batch), desc=desc, unit="batch", disable=None):
        chunk = edits[i : i + batch]
        outs.append(inpaint(pipe, sources[i : i + len(chunk)], np.stack([e.mask for e in chunk]),
                            [e.target.caption for e in chunk], seed + i, steps, guidance, batch))
    return _pairs_from(edits, sources, np.concatenate(outs), "inpaint")
