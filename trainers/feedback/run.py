"""One feedback stage run (a ByteEdit stage, or Diffusion-DPO from the labels: dpo.py), end to end, as the Celery
task calls it:

start model (the previous stage's version, else the promoted editor, else the base inpainting model)
-> reward models (the promoted versions) -> held-out evaluation of the start model -> training
(resumable from <state_dir>/runs/<run id>) -> candidate editor version in the registry with its
metrics, plots and lineage -> promotion only if the evaluation says it is better than the model served now
(the promoted editor, else the base): a higher feedback score (mean reward) at its own step count, and
world-judge success no more than `success_tolerance` below the served model's, and, with `review="panel"`,
the reviewers preferring it side by side on the same held-out edits (review.py); with `review="people"` those
pairs become Label Studio side-by-side tasks and the candidate waits for `editloop models review`. With
`snapshot_every`, the stage first picks its best snapshot on a validation set of its own (selection.py),
scored by the simulated reviewers under `review="panel"`, else by the rewards. A chain's later stage starts
from the stage before even when that one was refused, but is still gated against the served model, so
small losses cannot add up through a chain into a promotion; and when the served model is itself a fine-tuned
version, the candidate's judged success must also stay within `success_tolerance` of the base model's (the
floor: non-inferiority to the base, so they cannot add up round after round either).

The candidate's version is derived from the run id, so a run resumed after a lost worker registers
one version, never two.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from editloop.labels.review import (
    AWAITING,
    NONINFERIORITY_MARGIN,
    Review,
    accelerated,
    request_review,
    review_guard,
    review_record,
)
from editloop.models.card import SamplingDefaults, write_card
from editloop.models.zoo import load_pipeline
from editloop.registry import (
    DEFAULT_TOLERANCE,
    editor_model_dir,
    fetch_model_dir,
    load_check,
    promoted,
    store_model_dir,
)
from editloop.settings import Settings
from editloop.store.base import BlobStore
from trainers.feedback.dpo import dpo_data, dpo_step
from trainers.feedback.evaluate import evaluate_samples, sample
from trainers.feedback.examples import feedback_examples
from trainers.feedback.grpo import grpo_step, hacking_guard
from trainers.feedback.loop import FeedbackConfig, FeedbackState, train_feedback
from trainers.feedback.plots import plot_history
from trainers.feedback.progressive import reward_kinds, stage_config
from trainers.feedback.review import check_review, net_preference, side_by_side
from trainers.feedback.reward_client import ClientPolicy, make_scorer
from trainers.feedback.rewards import RewardModels, load_rewards
from trainers.reward.data import ImageCache
from trainers.runs import logged, register_and_gate, run_once, update_run

log = logging.getLogger(__name__)
EDITOR_KIND = "editor"


@dataclass(frozen=True)
class EvalConfig:
    examples: int = 48
    seed: int = 20_000  # held out: training draws examples from (seed, stage, step) streams
    success_tolerance: float = 0.02
    auto_promote: bool = True
    # "panel": the world's simulated reviewers must prefer the candidate side by side (review.py); "people": its
    # held-out pairs go to Label Studio and it waits for `editloop models review` (editloop/labels/review.py)
    review: str = "none"
    validation_seed: int = 40_000  # checkpoint selection's examples: apart from the gate's and training's
    # a faster candidate (fewer sampling steps than the served model) need only be no worse side by side than
    # the served model, by this margin of net preference (a non-inferiority test; editloop/labels/review.py)
    review_margin: float = NONINFERIORITY_MARGIN

    def __post_init__(self) -> None:
        check_review(self.review)
        if not 0 <= self.review_margin < 1:
            raise ValueError(f"`eval.review_margin` must be in [0, 1), got {self.review_margin}")
        if self.examples < 1:
            raise ValueError(f"`eval.examples` must be >= 1, got {self.examples}")


def start_model(sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                parent_version: str | None) -> tuple[Path, str, int | None]:
    """(directory, version name, registry id or None) of the model this stage starts from."""
    with sessions() as s:
        _, version, path, row_id = editor_model_dir(s, store, settings.editor_model, settings.state_dir / "models",
                                                    parent_version)
    return path, version, row_id


def promoted_rewards(sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                     kinds: list[str]) -> RewardModels:
    return load_rewards(*promoted_reward_paths(sessions, store, settings, kinds))


def promoted_reward_paths(sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                          kinds: list[str] | tuple[str, ...], required: bool = True
                          ) -> tuple[dict[str, Path], dict[str, str]]:
    """(model directory, version) of each kind's promoted reward; a kind with none is refused, naming the command
    (or, not `required`, left out)."""
    paths, versions = {}, {}
    with sessions() as s:
        for kind in kinds:
            row = promoted(s, kind)
            if row is None and not required:
                continue
            if row is None:
                raise ValueError(f"feedback learning needs a promoted {kind} reward model; train one with "
                                 f"`editloop train reward --kind {kind}`")
            paths[kind] = fetch_model_dir(store, row.checkpoint_key, settings.state_dir / "models")
            versions[kind] = row.version
    return paths, versions


def default_steps(path: Path) -> int:
    return SamplingDefaults.from_dir(path).steps


def write_model_dir(pipe, dest: Path, version: str, cfg: FeedbackConfig, extra: dict[str, Any]) -> None:
    pipe.save_pretrained(dest, safe_serialization=True)
    meta = {"kind": EDITOR_KIND, "version": version, "default_steps": cfg.schedule.steps,
            "default_guidance": cfg.guidance, "default_scheduler": "ddim", "stage": cfg.stage, **extra}
    write_card(dest, meta)


# a faster candidate's mean reward (sigmoid) may be this much below the reference's: the registry's own tolerance
FASTER_SCORE_TOLERANCE = DEFAULT_TOLERANCE


def promotion_guards(metrics: dict[str, float], reference: dict[str, float], tolerance: float,
                     against: str = "the served model", review: Review | None = None,
                     margin: float | None = None) -> list[str]:
    """Reasons the candidate is not better than `reference` (empty = better); with a side-by-side `review`
    of the candidate against it, the reviewers must also prefer the candidate, or with a `margin` (a faster
    candidate) find it no worse than that (review_guard). A faster candidate claims "as good, faster", so its
    feedback score need only stay within FASTER_SCORE_TOLERANCE of the reference's; any other must raise it."""
    why = [reason] if review is not None and (reason := review_guard(review, against, margin=margin)) else []
    if margin is not None:
        if metrics["feedback_score"] < reference["feedback_score"] - FASTER_SCORE_TOLERANCE:
            why.append(f"feedback score {metrics['feedback_score']:.4f} fell more than {FASTER_SCORE_TOLERANCE} "
                       f"below {against}'s {reference['feedback_score']:.4f}")
    elif metrics["feedback_score"] <= reference["feedback_score"]:
        why.append(f"feedback score {metrics['feedback_score']:.4f} is not above {against}'s "
                   f"{reference['feedback_score']:.4f}")
    if metrics["success"] < reference["success"] - tolerance:
        why.append(f"judged success {metrics['success']:.3f} fell more than {tolerance} below {against}'s "
                   f"{reference['success']:.3f}")
    return why


def base_floor_metrics(settings: Settings, served_version: str, start_version: str, start_metrics: dict[str, float],
                       held_out: list, rewards: RewardModels, seed: int, guidance: float) -> dict[str, float] | None:
    """The base inpainting model on the gate's examples, when the served model is a fine-tuned one (else the
    reference already is the base): every editor version must stay non-inferior to the base, not only to the
    version before it, so small allowed losses cannot add up round after round."""
    from editloop.models.model_dir import model_version

    base_version = model_version(settings.editor_model)
    if served_version == base_version:
        return None
    if start_version == base_version:
        return start_metrics
    pipe = load_pipeline(settings.editor_model, "inpaint", device=settings.device, dtype="fp32")
    got = sample(pipe, held_out, seed, default_steps(settings.editor_model), guidance)
    return evaluate_samples(got, held_out, rewards)


def base_floor_guard(metrics: dict[str, float], base: dict[str, float] | None, tolerance: float) -> list[str]:
    """Non-inferiority to the base on the world's independent judge (judged success), within `tolerance`."""
    if base is None or metrics["success"] >= base["success"] - tolerance:
        return []
    return [f"judged success {metrics['success']:.3f} fell more than {tolerance} below the base model's "
            f"{base['success']:.3f} (every editor must stay non-inferior to the base)"]


def run_feedback_stage(stage: str, run_id: str, sessions: sessionmaker[Session], store: BlobStore,
                       settings: Settings, config: dict[str, Any] | None = None,
                       parent_version: str | None = None) -> dict[str, Any]:
    """Train (or resume) feedback run `run_id` of `stage`; returns its outputs (also on the run row)."""
    config = dict(config or {})
    evaluation = EvalConfig(**config.pop("eval", {}))
    cfg = stage_config(stage, **config)
    inputs = {"config": cfg.to_dict(), "eval": asdict(evaluation), "parent_version": parent_version}
    return run_once(sessions, run_id, f"feedback-{stage}", inputs,
                    lambda: _run(stage, run_id, sessions, store, settings, cfg, evaluation, parent_version))


def _run(stage: str, run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
         cfg: FeedbackConfig, evaluation: EvalConfig, parent_version: str | None) -> dict[str, Any]:
    dpo = dpo_data(sessions, store, run_id) if cfg.stage == "dpo" else None  # too few labels: stop before sampling
    start_dir, start_version, start_id = start_model(sessions, store, settings, parent_version)
    rewards = promoted_rewards(sessions, store, settings, reward_kinds(cfg))
    scorer = grpo_scorer(cfg, rewards, settings)  # a reward service down or on another version: refused before sampling
    pipe = load_pipeline(start_dir, "inpaint", device=settings.device, dtype="fp32")
    rewards.to(pipe.unet.device)
    held_out = feedback_examples(evaluation.examples, evaluation.seed, cfg.tasks)
    validation = feedback_examples(evaluation.examples, evaluation.validation_seed, cfg.tasks)
    selecting = cfg.snapshot_every > 0
    parent = sample(pipe, held_out, evaluation.seed, default_steps(start_dir), cfg.guidance)
    parent_metrics = evaluate_samples(parent, held_out, rewards)
    served_dir, served_version, _ = start_model(sessions, store, settings, None)
    served_pipe = pipe if served_version == start_version else load_pipeline(
        served_dir, "inpaint", device=settings.device, dtype="fp32")
    # what the candidate must beat: the model served now, on the gate's examples (and on the validation set,
    # sampled before training: `pipe` may be the served model, and it trains in place)
    reference = parent if served_pipe is pipe else sample(served_pipe, held_out, evaluation.seed,
                                                         default_steps(served_dir), cfg.guidance)
    served_val = sample(served_pipe, validation, evaluation.validation_seed, default_steps(served_dir),
                        cfg.guidance) if selecting else None
    del served_pipe
    reference_metrics = parent_metrics if reference is parent else evaluate_samples(reference, held_out, rewards)
    base_metrics = base_floor_metrics(settings, served_version, start_version, parent_metrics, held_out, rewards,
                                      evaluation.seed, cfg.guidance)
    run_dir = settings.state_dir / "runs" / run_id

    def row_progress(step: int, total: int, last: dict[str, float]) -> None:
        update_run(sessions, run_id, progress=step / total, outputs={"last": last})

    progress = logged(row_progress, run_id, f"feedback-{stage}", run_dir=run_dir)
    log.info("run %s feedback-%s: from %s, %d steps of %d, rewards %s, served %s (success %.3f)", run_id[:12], stage,
             start_version, cfg.steps, cfg.batch_size, rewards.versions, served_version, reference_metrics["success"])

    def validation_score(step: int) -> float:
        """The snapshot loaded now, on the validation set: the reviewers' net preference over the served
        model, or (without a review) the rewards' score."""
        got = sample(pipe, validation, evaluation.validation_seed, cfg.schedule.steps, cfg.guidance)
        if evaluation.review == "panel":
            return net_preference(side_by_side(got.images, served_val.images, validation).verdicts)
        return evaluate_samples(got, validation, rewards)["feedback_score"]

    try:
        step = dpo_step(dpo, ImageCache(store)) if dpo is not None else grpo_step(scorer) if scorer else None
        if settings.train_procs > 1 and step is None and not selecting:  # a data-parallel job (PeFL stages)
            paths, _ = promoted_reward_paths(sessions, store, settings, reward_kinds(cfg))
            state = train_distributed(run_id, cfg, settings, start_dir, paths, rewards.versions, pipe, run_dir)
        else:
            if settings.train_procs > 1:
                log.info("run %s feedback-%s: runs in one process (data-parallel jobs train the PeFL stages "
                         "without checkpoint selection)", run_id[:12], stage)
            state = train_feedback(pipe, rewards, cfg, run_dir, progress, validation_score if selecting else None,
                                   step=step)
    finally:
        if scorer is not None:
            scorer.close()
    candidate = sample(pipe, held_out, evaluation.seed, cfg.schedule.steps, cfg.guidance)
    metrics = evaluate_samples(candidate, held_out, rewards)
    review = side_by_side(candidate.images, reference.images, held_out) if evaluation.review == "panel" else None
    plot = plot_history(state.history, run_dir / "curves.png", f"{stage} run {run_id[:12]} (T={cfg.schedule.steps})")
    plot_key = store.put(plot.read_bytes(), "image/png")
    version = f"{stage}-{run_id[:12]}"
    margin = evaluation.review_margin if accelerated(metrics, reference_metrics) else None
    guards = promotion_guards(metrics, reference_metrics, evaluation.success_tolerance, review=review, margin=margin)
    guards += base_floor_guard(metrics, base_metrics, evaluation.success_tolerance)
    guards += hacking_guard(metrics, reference_metrics, cfg.grpo) if cfg.grpo is not None else []
    if evaluation.review == "people":  # the gate refuses it until `editloop models review` has the verdicts
        guards.append(f"{AWAITING} ({len(held_out)} pairs against {served_version}: `editloop annotation push`, "
                      f"then `editloop models review editor {version}`)")
    lineage = {"run_id": run_id, "stage": stage, "start_version": start_version, "rewards": rewards.versions,
               **({"labels": dpo.label_ids, "pairs": len(dpo.pairs)} if dpo is not None else {}),
               **({"scorer": scorer.describe()} if scorer is not None else {})}
    with tempfile.TemporaryDirectory() as tmp:
        write_model_dir(pipe, Path(tmp), version, cfg, {"lineage": lineage})
        key = store_model_dir(store, Path(tmp))
    all_metrics = {**metrics, "eval_score": metrics["feedback_score"],
                   "parent_eval_score": reference_metrics["feedback_score"], "parent": parent_metrics,
                   "reference": reference_metrics, "reference_version": served_version,
                   "guard_failures": guards, "steps_done": state.step, "review_margin": margin,
                   **({"base": base_metrics} if base_metrics is not None else {}),
                   **review_metrics(review, state, margin)}
    outputs: dict[str, Any] = {"version": version, "checkpoint_key": key, "metrics": all_metrics,
                               "curves_key": plot_key, "start_version": start_version}
    with sessions.begin() as s:
        def review_pairs(session: Session) -> None:  # people review: its pairs go out before the gate is asked
            if evaluation.review == "people":
                outputs["review_pairs"] = request_review(
                    session, store, version, served_version, candidate.images, reference.images,
                    [e.prompt for e in held_out], np.stack([e.source for e in held_out]),
                    np.stack([e.mask for e in held_out]))

        # the registry's gate refuses a candidate with guard failures
        register_and_gate(s, run_id, EDITOR_KIND, version, key, all_metrics,
                          {"lineage": lineage, "train": cfg.to_dict(), "eval": asdict(evaluation),
                           "curves_key": plot_key}, start_id, outputs,
                          load_check(EDITOR_KIND, store, settings.state_dir / "models"), evaluation.auto_promote,
                          review_pairs, tolerance=0.0 if margin is None else FASTER_SCORE_TOLERANCE)
    log.info("run %s feedback-%s: registered %s (success %.3f, served %.3f); %s", run_id[:12], stage, version,
             metrics["success"], reference_metrics["success"],
             "promoted" if outputs["promoted"] else f"not promoted: {outputs.get('refused', 'auto_promote off')}")
    return outputs


def train_distributed(run_id: str, cfg: FeedbackConfig, settings: Settings, start_dir: Path,
                      reward_paths: dict[str, Path], versions: dict[str, str], pipe, run_dir: Path) -> FeedbackState:
    """The stage's training as an EDITLOOP_TRAIN_PROCS-process job (trainers/feedback/job.py); `pipe` then holds its
    trained UNet, as after train_feedback in this process."""
    import json

    import torch

    from editloop.models.zoo import set_timestep_spacing
    from trainers.distributed import launch
    from trainers.feedback.job import TRAINED

    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"config": cfg.to_dict(), "start_dir": str(start_dir), "rewards": {k: str(p) for k, p in
                                                                              reward_paths.items()},
            "versions": versions}
    (run_dir / "job-spec.json").write_text(json.dumps(spec))
    log.info("run %s feedback-%s: a %d-process job", run_id[:12], cfg.stage, settings.train_procs)
    launch("trainers.feedback.job", [run_id, str(run_dir / "job-spec.json")], settings.train_procs, settings,
           run_dir / "job.log")
    if cfg.timestep_spacing is not None:  # as train_feedback sets it: trained, evaluated and saved with it
        set_timestep_spacing(pipe, cfg.timestep_spacing)
    pipe.unet.load_state_dict(torch.load(run_dir / TRAINED, map_location=pipe.unet.device, weights_only=True))
    history = json.loads((run_dir / "history.json").read_text())
    return FeedbackState(history[-1]["step"] if history else 0, history)


def grpo_scorer(cfg: FeedbackConfig, rewards: RewardModels, settings: Settings):
    """What scores a GRPO run's samples (reward_client.py), pinned to the promoted versions the gate loaded; None
    for other methods."""
    if cfg.grpo is None:
        return None
    grpo = cfg.grpo
    return make_scorer(grpo.scorer, rewards, grpo.reward_kinds(cfg.reward_weights), settings, grpo.addresses or None,
                       ClientPolicy(grpo.timeout, grpo.retries))


def review_metrics(review: Review | None, state: FeedbackState, margin: float | None = None) -> dict[str, Any]:
    """The reviewers' verdicts and the checkpoint selection, for the candidate's metrics."""
    out: dict[str, Any] = {}
    if review is not None:
        out["review"] = review_record(review, "panel", margin)
    if state.selection is not None:
        out["selected_step"] = state.selection.step
        out["selection_scores"] = {str(k): v for k, v in state.selection.scores.items()}
    return out
