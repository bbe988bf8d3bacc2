"""One SeedEdit alignment round, end to end, as the Celery task calls it:

start editor (the round before's version in a chain; none for a first round) -> pairs (a first round:
the weak generator; later rounds: the editor regenerates pairs for new instructions) -> filters and, in later
rounds, the choice per spec (trainers/align/select.py; counts per test and kind; too few survivors stop the
round with that reason) -> fine-tuning (resumable from
<state_dir>/runs/<run id>) -> held-out evaluation by the world judge -> candidate `instruct` version with
its metrics, lineage and the pairs it trained on (in the blob store) -> promotion through the registry
gate against the promoted instruct editor evaluated on the same held-out edits.

The candidate's version is derived from the run id, so a run resumed after a lost worker registers one
version, never two; the pairs are regenerated identically on resume (seeded by round).
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from editloop.models.base import base_fingerprint
from editloop.models.instruct import InstructEditor, load_instruct_editor
from editloop.registry import (
    find_version,
    instruct_model_dir,
    load_check,
    store_model_dir,
)
from editloop.settings import Settings
from editloop.store.base import BlobStore
from trainers.align.editor_train import TrainState, new_editor, train_editor
from trainers.align.evaluate import evaluate_editor, held_out_edits
from trainers.align.filters import AlignmentScorer, JudgeScorer, Scorer
from trainers.align.pairs import Pairs
from trainers.align.round_config import RoundConfig
from trainers.align.select import kept_round_pairs
from trainers.runs import logged, register_and_gate, run_once, update_run

log = logging.getLogger(__name__)

KIND = "instruct"


class TooFewPairs(ValueError):
    """Too few pairs survived the filters to train on."""


def make_scorer(cfg: RoundConfig, sessions: sessionmaker[Session], store: BlobStore, settings: Settings) -> Scorer:
    from trainers.feedback.run import promoted_rewards

    if cfg.scorer == "judge":
        return JudgeScorer()
    try:
        return AlignmentScorer(promoted_rewards(sessions, store, settings, ["alignment"]))
    except ValueError:
        if cfg.scorer == "alignment":
            raise
        return JudgeScorer()


def check_survivors(round_no: int, kept: int, counts: dict, min_pairs: int) -> None:
    if kept < min_pairs:
        raise TooFewPairs(f"round {round_no}: only {kept} of {counts['total']} pairs survived the filters "
                          f"({counts['scorer']} scorer; after each test: {counts['after']}), need at least "
                          f"{min_pairs}; loosen the filters or generate more pairs")


def pairs_blob(store: BlobStore, pairs: Pairs) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return store.put(pairs.save(Path(tmp) / "pairs.npz").read_bytes(), "application/octet-stream")


def load_pairs_blob(store: BlobStore, key: str) -> Pairs:
    return Pairs.load(io.BytesIO(store.get(key)))


def run_align_round(run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                    config: dict[str, Any] | None = None, parent_version: str | None = None) -> dict[str, Any]:
    """Run (or resume) alignment round `run_id`; returns its outputs (also on the run row)."""
    cfg = RoundConfig.from_dict(config or {})
    return run_once(sessions, run_id, "align", {"config": cfg.to_dict(), "parent_version": parent_version},
                    lambda: _run(run_id, sessions, store, settings, cfg, parent_version))


def _start(sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
           parent_version: str | None) -> tuple[InstructEditor | None, int, dict[str, Any]]:
    """(start editor, round number, parent row config) for a round."""
    if parent_version is None:
        return None, 1, {}
    with sessions() as s:
        row = find_version(s, KIND, parent_version)
        _, _, path, _ = instruct_model_dir(s, store, settings.instruct_model, settings.state_dir / "models",
                                           parent_version)
        meta = dict(row.config or {})
    editor = load_instruct_editor(path, device=settings.device)
    return editor, int(meta.get("round", 0)) + 1, meta


def reference_metrics(sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                       edits: list) -> tuple[dict | None, str | None]:
    """The promoted (or default) instruction editor's metrics on the same held-out edits."""
    metrics, name, _ = reference_edits(sessions, store, settings, edits)
    return metrics, name


def reference_edits(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, edits: list
                    ) -> tuple[dict | None, str | None, np.ndarray | None]:
    """(metrics, name, outputs) of the promoted (or default) instruction editor on the held-out edits."""
    with sessions() as s:
        found = instruct_model_dir(s, store, settings.instruct_model, settings.state_dir / "models")
    if found is None:
        return None, None, None
    name, version, path, _ = found
    metrics, outputs = evaluate_editor(load_instruct_editor(path, device=settings.device), edits)
    return metrics, f"{name}:{version}", outputs


def eval_score(metrics: dict) -> float:
    """One number for the gate: the mean of judged success and preservation on the held-out edits."""
    return 0.5 * (metrics["success"] + metrics["preservation"])


def _run(run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings, cfg: RoundConfig,
         parent_version: str | None) -> dict[str, Any]:
    start, round_no, parent_meta = _start(sessions, store, settings, parent_version)
    kept, counts = kept_round_pairs(round_no, cfg, start, make_scorer(cfg, sessions, store, settings),
                                    settings.device)
    check_survivors(round_no, len(kept), counts, cfg.min_pairs)
    pairs_key = pairs_blob(store, kept)
    previous_keys = list(parent_meta.get("pairs_keys", [])) if cfg.keep_previous else []
    train_pairs = Pairs.concat([load_pairs_blob(store, k) for k in previous_keys] + [kept])
    update_run(sessions, run_id, outputs={"filter": counts, "pairs_key": pairs_key, "train_pairs": len(train_pairs)})
    editor = start if start is not None else new_editor(cfg.arch, cfg.init, cfg.schedule, settings.device)
    if editor.arch != cfg.arch:
        raise ValueError(f"round {round_no} continues a {editor.arch} editor; `arch` {cfg.arch!r} does not match")

    def row_progress(step: int, total: int, last: dict[str, float]) -> None:
        update_run(sessions, run_id, progress=step / total, outputs={"last": last, "filter": counts})

    log.info("run %s align round %d: %d training pairs (this round's survivors: %s), %d steps", run_id[:12],
             round_no, len(train_pairs), counts, cfg.train.steps)
    run_dir = settings.state_dir / "runs" / run_id
    if settings.train_procs > 1:
        editor, state = train_distributed(run_id, round_no, cfg, settings, editor, train_pairs, run_dir)
    else:
        progress = logged(row_progress, run_id, f"align-{round_no}", run_dir=run_dir)
        state = train_editor(editor, train_pairs, cfg.train, run_dir, progress)
    edits = held_out_edits(cfg.eval_per_kind)
    metrics, _ = evaluate_editor(editor, edits)
    reference, reference_name = reference_metrics(sessions, store, settings, edits)
    version = f"align-r{round_no}-{run_id[:12]}"
    lineage = {"run_id": run_id, "round": round_no, "start_version": parent_version, "reference": reference_name,
               **({"base": base_fingerprint()} if parent_version is None else {})}  # started from the committed base
    all_metrics = {**metrics, "eval_score": eval_score(metrics), "filter": counts, "train_pairs": len(train_pairs),
                   "steps_done": state.step, "final_loss": state.history[-1]["loss_ema"],
                   **({"parent_eval_score": eval_score(reference), "reference": reference} if reference else {})}
    meta = {"round": round_no, "pairs_keys": [*previous_keys, pairs_key], "lineage": lineage,
            "train": cfg.to_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        editor.save(Path(tmp), {"version": version, "round": round_no, "lineage": lineage})
        key = store_model_dir(store, Path(tmp))
    outputs: dict[str, Any] = {"version": version, "round": round_no, "checkpoint_key": key, "filter": counts,
                               "metrics": {k: v for k, v in all_metrics.items() if k not in ("filter", "reference")},
                               "pairs_key": pairs_key}
    with sessions.begin() as s:
        parent_id = find_version(s, KIND, parent_version).id if parent_version else None
        register_and_gate(s, run_id, KIND, version, key, all_metrics, meta, parent_id, outputs,
                          load_check(KIND, store, settings.state_dir / "models"), cfg.auto_promote, tolerance=0.0)
    return outputs


def train_distributed(run_id: str, round_no: int, cfg: RoundConfig, settings: Settings, editor: InstructEditor,
                      pairs: Pairs, run_dir: Path) -> tuple[InstructEditor, TrainState]:
    """The round's editor training as an EDITLOOP_TRAIN_PROCS-process job (trainers/align/job.py); returns the
    trained editor and the training state, as train_editor in this process would."""
    import json

    import torch

    from trainers.align.job import TRAINED
    from trainers.distributed import launch

    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "start-editor").is_dir():  # a resumed round keeps the start it began from
        editor.save(run_dir / "start-editor", {})
    torch.save(pairs, run_dir / "job-pairs.pt")
    (run_dir / "job-spec.json").write_text(json.dumps({"config": cfg.to_dict(), "round": round_no}))
    log.info("run %s align round %d: a %d-process job", run_id[:12], round_no, settings.train_procs)
    launch("trainers.align.job", [run_id, str(run_dir / "job-spec.json")], settings.train_procs, settings,
           run_dir / "job.log")
    history = json.loads((run_dir / "history.json").read_text())
    return load_instruct_editor(run_dir / TRAINED, settings.device), TrainState(history[-1]["step"], history)


def per_round_rows(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A compact per-round table (CLI and bench)."""
    return [{"round": o["round"], "version": o["version"], "kept": o["filter"]["kept"],
             "total": o["filter"]["total"], "success": round(o["metrics"]["success"], 3),
             "preservation": round(o["metrics"]["preservation"], 3),
             "l1_outside": round(o["metrics"]["l1_outside"], 4), "promoted": o["promoted"]} for o in outputs]


