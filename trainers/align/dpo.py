"""Diffusion-DPO (Wallace et al., 2023) for the instruction editor, straight from best/worst labels on
instruction-edit sets (kind "instruct": a source, an instruction, N edits of it; `editloop annotation candidates
--instruct`). No reward model in the loss.

Pairs: every (best, other) and (other, worst) of each labelled set, as the inpainting editor's DPO reads them
(trainers/feedback/dpo.py). One step: pairs drawn from (seed, "instruct-dpo", step) alone; both edits VAE-encoded
and noised with the same noise at the same timestep; the editor predicts the noise (or v) for both, conditioned on
the set's source image and instruction (the causal editor's input branch in the same graph, as its training runs
it), and so does the frozen reference (the start editor's UNet). The loss is feedback/dpo.py's dpo_loss.

A run (kind "align-dpo") goes through the ALIGN_ROUND task and the alignment lifecycle: it starts from the
instruct version the chain names (the promoted one when queued, pinned on the run's row, so a resumed run starts
from the same), trains with the feedback loop's checkpoints, EMA and exact resume (train_feedback with this step),
is judged by the world on the alignment rounds' held-out edits, registered as an `instruct` version
(`dpo-<run>`: one per run, resumes included) with the labels it used in its lineage, and promoted through the same
gate as a round (no worse than the promoted editor on the same held-out edits).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import CandidateSet, Preference
from editloop.models.causal_attention import CausalBranchProcessor
from editloop.models.instruct import InstructEditor, load_instruct_editor
from editloop.models.zoo import training_scheduler
from editloop.settings import Settings
from editloop.store.base import BlobStore
from trainers.feedback.dpo import DpoData, dpo_data, dpo_update, draw_noise, draw_pairs
from trainers.pretrain.diffusion import prediction_target
from trainers.reward.data import INSTRUCT_SET_KIND, ImageCache, Pair

log = logging.getLogger(__name__)

KIND = "align-dpo"  # the run's kind; its version is an "instruct" version
MIN_LABELS = 20
EVAL_DEFAULTS = {"eval_per_kind": 8, "auto_promote": True}


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


def split_config(config: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training fields: a feedback "dpo" stage's, evaluation fields: eval_per_kind, auto_promote), checked."""
    from trainers.feedback.progressive import stage_config

    train = dict(config or {})
    evaluation = {k: train.pop(k, v) for k, v in EVAL_DEFAULTS.items()}
    if not isinstance(evaluation["eval_per_kind"], int) or not 1 <= evaluation["eval_per_kind"] <= 256:
        raise ValueError(f"`eval_per_kind` must be an integer in 1..256, got {evaluation['eval_per_kind']!r}")
    for name in ("reward_weights", "tasks", "adversarial", "grpo"):
        if name in train:
            raise ValueError(f"`{name}` does not apply to an instruction editor's DPO run")
    stage_config("dpo", **train)  # ValueError naming an unknown or bad field
    return train, evaluation


def run_instruct_dpo(run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                     config: dict[str, Any] | None = None, start_version: str | None = None) -> dict[str, Any]:
    """Run (or resume) instruction-editor DPO run `run_id` from instruct version `start_version` (None: the
    committed editor); returns its outputs (also on the run row)."""
    from trainers.runs import run_once

    train, evaluation = split_config(config)
    return run_once(sessions, run_id, KIND, {"config": config or {}, "start_version": start_version},
                    lambda: _run(run_id, sessions, store, settings, train, evaluation, start_version))


def _start(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, version: str | None
           ) -> tuple[str, Path, int | None, dict[str, Any]]:
    """(name, directory, registry id, registry config) of the start editor: instruct version `version`, or the
    committed editor when None."""
    from editloop.models.card import has_card
    from editloop.models.model_dir import model_version
    from editloop.registry import find_version, instruct_model_dir

    if version is None:
        if not has_card(settings.instruct_model):
            raise ValueError(f"no instruction editor to start from: {settings.instruct_model} holds none")
        return f"default-instruct:{model_version(settings.instruct_model)}", settings.instruct_model, None, {}
    with sessions() as s:
        row = find_version(s, "instruct", version)  # PromotionRefused naming it when it is not registered
        _, name, path, row_id = instruct_model_dir(s, store, settings.instruct_model, settings.state_dir / "models",
                                                   version)
        return name, path, row_id, dict(row.config or {})


def _run(run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings, train: dict[str, Any],
         evaluation: dict[str, Any], start_version: str | None) -> dict[str, Any]:
    from editloop.registry import load_check, store_model_dir
    from trainers.align.evaluate import evaluate_editor, held_out_edits
    from trainers.align.run import eval_score, reference_metrics
    from trainers.feedback.loop import train_feedback
    from trainers.feedback.progressive import stage_config
    from trainers.runs import logged, register_and_gate, update_run

    cfg = stage_config("dpo", **train)
    data = instruct_dpo_data(sessions, store, run_id)
    name, path, parent_id, parent_meta = _start(sessions, store, settings, start_version)
    editor = load_instruct_editor(path, device=settings.device)
    log.info("run %s instruct dpo: %d pairs from %d labels, start %s, %d steps", run_id[:12], len(data.pairs),
             len(data.label_ids), name, cfg.steps)
    update_run(sessions, run_id, outputs={"pairs": len(data.pairs), "labels": len(data.label_ids), "start": name})

    def row_progress(step: int, total: int, last: dict[str, float]) -> None:
        update_run(sessions, run_id, progress=step / total, outputs={"last": last})

    run_dir = settings.state_dir / "runs" / run_id
    state = train_feedback(editor, None, cfg, run_dir, logged(row_progress, run_id, "instruct-dpo", run_dir=run_dir),
                           step=instruct_dpo_step(data, ImageCache(store)))
    editor.unet.eval()
    edits = held_out_edits(int(evaluation["eval_per_kind"]))
    metrics, _ = evaluate_editor(editor, edits)
    reference, reference_name = reference_metrics(sessions, store, settings, edits)
    version = f"dpo-{run_id[:12]}"
    lineage = {"run_id": run_id, "method": "diffusion-dpo", "start_version": name, "reference": reference_name,
               "labels": len(data.label_ids), "max_label_id": max(data.label_ids)}
    last = state.history[-1] if state.history else {}
    all_metrics = {**metrics, "eval_score": eval_score(metrics), "labels": len(data.label_ids),
                   "pairs": len(data.pairs), "steps_done": state.step, "final_loss": last.get("loss"),
                   "implicit_accuracy": last.get("implicit_accuracy"),
                   **({"parent_eval_score": eval_score(reference), "reference": reference} if reference else {})}
    # a later alignment round continues this version as it would its start: the same round count and kept pairs
    meta = {**{k: parent_meta[k] for k in ("round", "pairs_keys") if k in parent_meta}, "lineage": lineage,
            "train": cfg.to_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        editor.save(Path(tmp), {"version": version, "lineage": lineage})
        key = store_model_dir(store, Path(tmp))
    outputs: dict[str, Any] = {"version": version, "checkpoint_key": key, "start": name,
                               "metrics": {k: v for k, v in all_metrics.items() if k != "reference"}}
    with sessions.begin() as s:
        register_and_gate(s, run_id, "instruct", version, key, all_metrics, meta, parent_id, outputs,
                          load_check("instruct", store, settings.state_dir / "models"),
                          bool(evaluation["auto_promote"]), tolerance=0.0)
    return outputs
