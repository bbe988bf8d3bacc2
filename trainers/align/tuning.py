"""The instruction editor tuned from feedback, by Diffusion-DPO on labels (dpo.py) or online GRPO scored by the reward
models (grpo.py): one lifecycle for both.

A run (kind "align-dpo" or "align-grpo") goes through the ALIGN_ROUND task: it starts from the instruct version the
chain names (the promoted one when queued, pinned on the run's row, so a resumed run starts from the same), trains
with the feedback loop's checkpoints, EMA and exact resume (train_feedback with the method's step), is judged by the
world on the alignment rounds' held-out edits, registered as an `instruct` version (`dpo-<run>` / `grpo-<run>`: one
per run, resumes included) with its lineage (the labels a DPO run used; the reward versions and scorer a GRPO run
was scored by), and promoted through an alignment round's gate (no worse than the served instruct version on the
same held-out edits). A GRPO candidate must also keep its held-out guard rewards and coherence within `guard_drop`
of the served editor's on those edits (trainers/feedback/grpo.py hacking_guard).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from editloop.models.card import read_card
from editloop.models.instruct import DEFAULTS, load_instruct_editor
from editloop.settings import Settings
from editloop.store.base import BlobStore
from trainers.align.dpo import KIND as DPO_KIND

log = logging.getLogger(__name__)

KINDS = {"dpo": DPO_KIND, "grpo": "align-grpo"}  # method -> the run's kind; its version is an "instruct" one
EVAL_DEFAULTS = {"eval_per_kind": 8, "auto_promote": True}
NOT_FOR = {"dpo": ("reward_weights", "tasks", "adversarial", "grpo"),
           "grpo": ("tasks", "adversarial", "dpo_beta", "task_reward_scale")}


def method_of(kind: str) -> str | None:
    """"align-dpo" -> "dpo"; None for a kind that is no instruction-editor tuning run."""
    return next((m for m, k in KINDS.items() if k == kind), None)


def split_config(config: dict[str, Any] | None, method: str = "dpo") -> tuple[dict[str, Any], dict[str, Any]]:
    """(training fields: a feedback stage's, evaluation fields: eval_per_kind, auto_promote), checked."""
    if method not in KINDS:
        raise ValueError(f"`method` must be one of {list(KINDS)}, got {method!r}")
    train = dict(config or {})
    evaluation = {k: train.pop(k, v) for k, v in EVAL_DEFAULTS.items()}
    if not isinstance(evaluation["eval_per_kind"], int) or not 1 <= evaluation["eval_per_kind"] <= 256:
        raise ValueError(f"`eval_per_kind` must be an integer in 1..256, got {evaluation['eval_per_kind']!r}")
    for name in NOT_FOR[method]:
        if name in train:
            raise ValueError(f"`{name}` does not apply to an instruction editor's {method.upper()} run")
    training_config(method, train)  # ValueError naming an unknown or bad field
    return train, evaluation


def training_config(method: str, train: dict[str, Any]):
    """The FeedbackConfig a run of `method` trains with: the stage's preset, an instruction-editor GRPO run's own
    preset (grpo.PRESET), then the run's fields."""
    from trainers.feedback.progressive import stage_config

    if method == "dpo":
        return stage_config("dpo", **train)
    from trainers.align.grpo import PRESET
    from trainers.feedback.grpo import check_grpo

    grpo = train.get("grpo", {})
    if not isinstance(grpo, dict):
        raise ValueError(f"`grpo` must be an object of GRPO settings, got {grpo!r}")
    cfg = stage_config("grpo", **{**train, "reward_weights": train.get("reward_weights", PRESET["reward_weights"]),
                                  "grpo": {**PRESET["grpo"], **grpo}})
    check_grpo(cfg)
    return cfg


def run_instruct_tuning(method: str, run_id: str, sessions: sessionmaker[Session], store: BlobStore,
                        settings: Settings, config: dict[str, Any] | None = None,
                        start_version: str | None = None) -> dict[str, Any]:
    """Run (or resume) instruction-editor run `run_id` of `method` ("dpo" or "grpo") from instruct version
    `start_version` (None: the committed editor); returns its outputs (also on the run row)."""
    from trainers.runs import run_once

    train, evaluation = split_config(config, method)
    return run_once(sessions, run_id, KINDS[method], {"config": config or {}, "start_version": start_version},
                    lambda: _run(method, run_id, sessions, store, settings, train, evaluation, start_version))


def run_instruct_dpo(run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                     config: dict[str, Any] | None = None, start_version: str | None = None) -> dict[str, Any]:
    return run_instruct_tuning("dpo", run_id, sessions, store, settings, config, start_version)


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


def _method_step(method: str, run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                 cfg, steps: int) -> tuple[Any, dict[str, Any], Any]:
    """(the training step, what the lineage records of its data, the GRPO scorer or None). Too few labels, or a
    reward service down or on another version, stop the run here, before anything is sampled."""
    if method == "dpo":
        from trainers.align.dpo import instruct_dpo_data, instruct_dpo_step
        from trainers.reward.data import ImageCache

        data = instruct_dpo_data(sessions, store, run_id)
        lineage = {"labels": len(data.label_ids), "max_label_id": max(data.label_ids), "pairs": len(data.pairs)}
        return instruct_dpo_step(data, ImageCache(store)), lineage, None
    from trainers.align.grpo import instruct_grpo_step
    from trainers.feedback.progressive import reward_kinds
    from trainers.feedback.run import grpo_scorer, promoted_rewards

    rewards = promoted_rewards(sessions, store, settings, reward_kinds(cfg))
    scorer = grpo_scorer(cfg, rewards, settings)
    return instruct_grpo_step(scorer, steps), {"rewards": rewards.versions, "sample_steps": steps}, scorer


def guard_scores(scorer, cfg, edits: list, outputs: np.ndarray) -> dict[str, float]:
    """The held-out guard rewards' mean sigmoid score (`reward_<kind>`) and coherence's mean probability of the
    edits, as the gate compares them (trainers/feedback/grpo.py hacking_guard)."""
    from editloop.world.render import render
    from trainers.align.grpo import score_edits

    kinds = list(cfg.grpo.guard) + (["coherence"] if cfg.grpo.coherence_weight > 0 else [])
    scores = score_edits(scorer, kinds, outputs, edits, np.stack([render(e.source) for e in edits]))
    return {("coherence" if k == "coherence" else f"reward_{k}"):
            float(np.nanmean(v if k == "coherence" else 1 / (1 + np.exp(-v)))) for k, v in scores.items()}


def _run(method: str, run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
         train: dict[str, Any], evaluation: dict[str, Any], start_version: str | None) -> dict[str, Any]:
    from editloop.registry import load_check, store_model_dir
    from trainers.align.evaluate import evaluate_editor, held_out_edits
    from trainers.align.run import eval_score, reference_edits
    from trainers.feedback.grpo import hacking_guard
    from trainers.feedback.loop import train_feedback
    from trainers.runs import logged, register_and_gate, update_run

    cfg = training_config(method, train)
    name, path, parent_id, parent_meta = _start(sessions, store, settings, start_version)
    sample_steps = (cfg.grpo.sample_steps if cfg.grpo is not None else 0) or int(
        read_card(path).get("default_steps", DEFAULTS["default_steps"]))
    # too few labels, or a reward service down: stopped here, before the editor is loaded
    step, data_lineage, scorer = _method_step(method, run_id, sessions, store, settings, cfg, sample_steps)
    log.info("run %s instruct %s: start %s, %d steps; %s", run_id[:12], method, name, cfg.steps, data_lineage)
    update_run(sessions, run_id, outputs={**data_lineage, "start": name})

    def row_progress(step_no: int, total: int, last: dict[str, float]) -> None:
        update_run(sessions, run_id, progress=step_no / total, outputs={"last": last})

    run_dir = settings.state_dir / "runs" / run_id
    try:
        editor = load_instruct_editor(path, device=settings.device)
        state = train_feedback(editor, None, cfg, run_dir,
                               logged(row_progress, run_id, f"instruct-{method}", run_dir=run_dir), step=step)
        editor.unet.eval()
        edits = held_out_edits(int(evaluation["eval_per_kind"]))
        metrics, outputs = evaluate_editor(editor, edits)
        reference, reference_name, reference_outputs = reference_edits(sessions, store, settings, edits)
        guards: list[str] = []
        if scorer is not None:
            metrics.update(guard_scores(scorer, cfg, edits, outputs))
            if reference is not None:
                reference.update(guard_scores(scorer, cfg, edits, reference_outputs))
                guards = hacking_guard(metrics, reference, cfg.grpo, f"the served editor ({reference_name})")
            data_lineage["scorer"] = scorer.describe()
    finally:
        if scorer is not None:
            scorer.close()
    version = f"{method}-{run_id[:12]}"
    lineage = {"run_id": run_id, "method": {"dpo": "diffusion-dpo", "grpo": "grpo"}[method], "start_version": name,
               "reference": reference_name, **data_lineage}
    last = state.history[-1] if state.history else {}
    all_metrics = {**metrics, "eval_score": eval_score(metrics), "steps_done": state.step,
                   "final_loss": last.get("loss"), "guard_failures": guards,
                   **{k: data_lineage[k] for k in ("labels", "pairs") if k in data_lineage},
                   **({"implicit_accuracy": last.get("implicit_accuracy")} if method == "dpo" else {}),
                   **({"parent_eval_score": eval_score(reference), "reference": reference} if reference else {})}
    # a later alignment round continues this version as it would its start: the same round count and kept pairs
    meta = {**{k: parent_meta[k] for k in ("round", "pairs_keys") if k in parent_meta}, "lineage": lineage,
            "train": cfg.to_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        editor.save(Path(tmp), {"version": version, "lineage": lineage})
        key = store_model_dir(store, Path(tmp))
    outputs_row: dict[str, Any] = {"version": version, "checkpoint_key": key, "start": name,
                                   "metrics": {k: v for k, v in all_metrics.items() if k != "reference"}}
    with sessions.begin() as s:
        register_and_gate(s, run_id, "instruct", version, key, all_metrics, meta, parent_id, outputs_row,
                          load_check("instruct", store, settings.state_dir / "models"),
                          bool(evaluation["auto_promote"]), tolerance=0.0)
    return outputs_row
