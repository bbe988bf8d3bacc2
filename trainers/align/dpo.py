"""Diffusion-DPO (Wallace et al., 2023) for the instruction editor, straight from best/worst labels on
instruction-edit sets (kind "instruct": a source, an instruction, N edits of it; `editloop annotation candidates
--instruct`). No reward model in the loss.

Pairs: every (best, other) and (other, worst) of each labelled set, as the inpainting editor's DPO reads them
(trainers/feedback/dpo.py). One step: pairs drawn from (seed, "instruct-dpo", step) alone; both edits VAE-encoded
and noised with the same noise at the same timestep; the editor predicts the noise (or v) for both, conditioned on
the set's source image and instruction (the causal editor's input branch in the same graph, as its training runs
it), and so does the frozen reference (the start editor's UNet). The loss is feedback/dpo.py's dpo_loss.

A run (kind "align-dpo") goes through the ALIGN_ROUND task and the lifecycle of trainers/align/tuning.py (the
start version pinned, train_feedback's checkpoints and exact resume, the world's judge and an alignment round's
gate), registered as an `instruct` version (`dpo-<run>`) with the labels it used in its lineage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import CandidateSet, Preference
from editloop.models.causal_attention import CausalBranchProcessor
from editloop.models.instruct import InstructEditor
from editloop.models.zoo import training_scheduler
from editloop.store.base import BlobStore
from trainers.feedback.dpo import DpoData, dpo_data, dpo_update, draw_noise, draw_pairs
from trainers.pretrain.diffusion import prediction_target
from trainers.reward.data import INSTRUCT_SET_KIND, ImageCache, Pair

KIND = "align-dpo"  # the run's kind; its version is an "instruct" version
MIN_LABELS = 20


def instruct_label_query():
    """The valid best/worst answers on instruction-edit sets (a select of Preference, oldest first): what a run
    reads, and what the loop's DPO leg counts."""
    return (select(Preference).join(CandidateSet, CandidateSet.id == Preference.candidate_set_id)
            .where(Preference.status == "valid", CandidateSet.kind == INSTRUCT_SET_KIND,
                   CandidateSet.source_image_id.is_not(None)).order_by(Preference.id))


def instruct_labels(session: Session) -> list[Preference]:
    """Valid best/worst answers on instruction-edit sets, oldest first."""
    return list(session.scalars(instruct_label_query()))


def instruct_dpo_data(sessions: sessionmaker[Session], store: BlobStore, run_id: str, min_labels: int = MIN_LABELS
                      ) -> DpoData:
    """The run's pairs from the labels on instruction-edit sets, pinned on its row (trainers.feedback.dpo.dpo_data)."""
    return dpo_data(sessions, store, run_id, min_labels, instruct_labels, "instruction-edit sets")


@dataclass
class InstructPairLatents:
    win: torch.Tensor  # N,4,h,w
    lose: torch.Tensor
    source: torch.Tensor  # N,4,h,w: the edited image's latent
    text: torch.Tensor  # N,L,D: the instructions


@torch.no_grad()
def encode_instruct_pairs(editor: InstructEditor, pairs: list[Pair], cache: ImageCache) -> InstructPairLatents:
    def latents(keys: list[str]) -> torch.Tensor:
        return editor.encode_images(np.stack([cache.image(k) for k in keys]))

    return InstructPairLatents(latents([p.win for p in pairs]), latents([p.lose for p in pairs]),
                               latents([p.source for p in pairs]), editor.encode_text([p.prompt for p in pairs]))


def instruct_errors(editor: InstructEditor, scheduler, batch: InstructPairLatents, empty: torch.Tensor,
                    t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-example squared error of `editor`'s prediction on the win edits then the lose edits (2N,), both noised
    with `noise` at `t` and conditioned on their source and instruction."""
    x0, eps, ts = torch.cat([batch.win, batch.lose]), torch.cat([noise, noise]), torch.cat([t, t])
    noisy = scheduler.add_noise(x0, eps, ts)
    target = prediction_target(scheduler, x0, eps, ts)
    source, text = torch.cat([batch.source] * 2), torch.cat([batch.text] * 2)
    if editor.arch == "causal":
        editor.encode_input_branch(source, empty)
    pred = editor.eps(noisy, ts, text, source, torch.ones(len(x0), dtype=torch.bool, device=x0.device))
    return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))


def reference_editor(editor: InstructEditor, unet: torch.nn.Module) -> InstructEditor:
    """`editor` with `unet` (a frozen copy of its start UNet: its causal processors came with the copy)."""
    branches = None
    if editor.arch == "causal":
        branches = next(p.state for p in unet.attn_processors.values() if isinstance(p, CausalBranchProcessor))
    return InstructEditor(editor.arch, unet, editor.vae, editor.text_encoder, editor.tokenizer, editor.scheduler,
                          dict(editor.meta), branches)


def instruct_dpo_step(data: DpoData, cache: ImageCache) -> Callable[..., dict[str, float]]:
    """A training step for trainers.feedback.loop.train_feedback with the editor as its `pipe`: (editor, cfg, step,
    params, opt, anchor) -> record, `anchor` being the frozen start UNet."""
    made: dict[str, Any] = {}

    def step_fn(editor: InstructEditor, cfg, step: int, params, opt, anchor) -> dict[str, Any]:
        if not made:
            made.update(scheduler=training_scheduler(editor.scheduler.config),
                        reference=reference_editor(editor, anchor), empty=editor.encode_text([""]))
        scheduler = made["scheduler"]
        chosen, generator = draw_pairs(data, cfg, step, "instruct-dpo")
        batch = encode_instruct_pairs(editor, chosen, cache)
        t, noise = draw_noise(scheduler, batch.win, generator)
        editor.unet.train()
        errors = instruct_errors(editor, scheduler, batch, made["empty"], t, noise)
        with torch.no_grad():
            reference = instruct_errors(made["reference"], scheduler, batch, made["empty"], t, noise)
        return dpo_update(errors, reference, cfg, step, params, opt)

    return step_fn
