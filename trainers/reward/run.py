"""One reward training run, end to end: data -> train (resumable) -> evaluate against the promoted
version on the same held-out set -> candidate version in the registry -> promotion through the gate.

`train_reward` is what the Celery task calls. Its run directory (<state_dir>/runs/<run id>) holds
the checkpoints, so a worker killed mid-run is replaced and the same run id resumes; the
candidate's version is derived from the run id, so a re-run never registers a second version.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from editloop.models.reward import load_reward, save_reward, tiny_reward
from editloop.models.reward_kinds import is_coherence
from editloop.models.zoo import pick_device
from editloop.registry import (
    fetch_model_dir,
    load_check,
    promoted,
    store_model_dir,
)
from editloop.settings import Settings
from editloop.store.base import BlobStore
from trainers.reward.kinds import kind_trainer
from trainers.reward.loop import LoopConfig
from trainers.runs import logged, register_and_gate, run_once, update_run

log = logging.getLogger(__name__)
JOB_DATA = "job-data.pt"  # a distributed run's data, as the worker built it, for the job's processes


@dataclass(frozen=True)
class RewardTrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-4
    schedule: str = "cosine"  # linear warm-up then cosine decay (trainers.reward.loop.lr_factor)
    warmup: int = 100
    mirror: bool = False  # aesthetic: mirror half of each batch, prompts' left/right swapped
    eval_every: int = 100
    patience: int = 5
    seed: int = 0
    min_labels: int = 20
    # aesthetic: labelled sets held out to choose the best checkpoint, apart from the 15% the gate and the chance
    # floor score (trainers/reward/data.split_of): a score chosen on is not a held-out score
    select_fraction: float = 0.10
    alignment_train: int = 4000  # generated examples (alignment)
    alignment_eval: int = 1000
    alignment_instructions: float = 0.2  # the fraction of alignment examples on edit instructions
    coherence_train: int = 512  # inpainted composites (coherence)
    coherence_eval: int = 128
    coherence_steps: int = 20  # sampling steps of the inpainting model that makes them
    warm_start: bool = True  # start from the promoted version's weights
    backbone: str = ""  # a CLIP directory (transformers format) to build a new aesthetic/alignment model on
    tolerance: float = 0.01
    auto_promote: bool = True
    # > 0: the run trains the fewer of `steps` and this many passes over its training examples, at least
    # `min_steps`, evaluating ~8 times (sized_to); 0: always `steps` (the labels' triggered runs use
    # EDITLOOP_REWARD_TRAIN_EPOCHS)
    epochs: float = 0.0
    min_steps: int = 200

    def sized_to(self, examples: int) -> RewardTrainConfig:
        """The config for a run on `examples` training examples: with `epochs`, a small label set gets a few passes
        instead of `steps` (1500 steps memorise a few hundred pairs within ~200: BENCHMARKS, "A turn of the loop")."""
        if not self.epochs > 0:
            return self
        passes = self.epochs * examples / self.batch_size
        steps = min(self.steps, max(self.min_steps, math.ceil(passes) if math.isfinite(passes) else self.steps))
        return replace(self, steps=steps, eval_every=min(self.eval_every, max(25, steps // 8)))

    def loop(self) -> LoopConfig:
        return LoopConfig(steps=self.steps, lr=self.lr, eval_every=self.eval_every, patience=self.patience,
                          checkpoint_every=self.eval_every, seed=self.seed, schedule=self.schedule,
                          warmup=self.warmup)


def _start_model(kind: str, parent_dir: Path | None, cfg: RewardTrainConfig, device: Any = None):
    """(model in training mode, tokenizer or None) a run starts from, on `device` (None: where it was built, the CPU):
    the promoted parent's weights, a CLIP backbone, or a fresh tiny model."""
    model, tokenizer = _built_model(kind, parent_dir, cfg)
    return (model if device is None else model.to(device)).train(), tokenizer


def _built_model(kind: str, parent_dir: Path | None, cfg: RewardTrainConfig):
    from editloop.models.tokenizer import build_tokenizer

    if parent_dir is not None and cfg.warm_start:
        _, model, tokenizer = load_reward(parent_dir, kind)
        return model, tokenizer
    if cfg.backbone and not is_coherence(kind):
        import torch
        from transformers import AutoTokenizer

        from editloop.models.reward import PreferenceReward

        torch.manual_seed(cfg.seed)
        model = PreferenceReward.from_clip(cfg.backbone)
        return model, AutoTokenizer.from_pretrained(cfg.backbone, local_files_only=True)
    return tiny_reward(kind, cfg.seed), (None if is_coherence(kind) else build_tokenizer())


def _evaluate(kind: str, model, tokenizer, data: dict) -> tuple[float, dict[str, float]]:
    """(the score the gate compares, every held-out metric): the kind's own evaluation (trainers/reward/kinds.py)."""
    return kind_trainer(kind).evaluate(model, tokenizer, data)


def chance_floor(kind: str, accuracy: float, data: dict, model=None) -> dict[str, Any]:
    """How surely the held-out score beats chance: a one-sided exact sign test over the kind's independent held-out
    units (its trainer's `floor`: the held-out candidate sets for the aesthetic reward, whose pairs share labels; the
    held-out examples for the alignment reward; for coherence the held-out composites whose own pixel AUC is above
    0.5). The registry's gate refuses a version whose p-value is not below EDITLOOP_PROMOTION_FLOOR_ALPHA
    (editloop.registry.floor_failure)."""
    from editloop.labels.stats import sign_test_p

    wins, units, name = kind_trainer(kind).floor(accuracy, data, model)
    return {"units": units, "unit": name, "wins": wins, "p_value": sign_test_p(wins, units - wins)}


DATA_KEYS = ("train", "select", "eval", "lineage")  # what every kind's data() returns (trainers/reward/kinds.py)


def _data(kind: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
          cfg: RewardTrainConfig) -> dict:
    data = kind_trainer(kind).data(sessions, store, settings, cfg)
    missing = [key for key in DATA_KEYS if key not in data]
    if missing:  # a kind that chose its checkpoint on "eval" would make the gate's score one chosen on
        raise ValueError(f"the {kind} reward's data() returned no {', '.join(map(repr, missing))} (a kind's data "
                         f"must name {', '.join(DATA_KEYS)}: trainers/reward/kinds.py)")
    return data


def _train(kind: str, model, tokenizer, data: dict, cfg: RewardTrainConfig, run_dir: Path, progress):
    return kind_trainer(kind).train(model, tokenizer, data, cfg, run_dir, progress)


def run_progress(sessions: sessionmaker[Session], run_id: str):
    """The training loop's progress callback: the run row's progress, last step and last evaluation."""
    last_eval: dict = {}

    def progress(step: int, total: int, last: dict) -> None:
        if "eval" in last:
            last_eval.update(last)
        update_run(sessions, run_id, progress=step / total, outputs={"last": last, "last_eval": dict(last_eval)})

    return progress


def _train_distributed(kind: str, run_id: str, cfg: RewardTrainConfig, settings: Settings,
                       parent_info: tuple | None, model, run_dir: Path, data: dict):
    """`_train` as a data-parallel job of EDITLOOP_TRAIN_PROCS processes (trainers/reward/job.py): the processes
    read this run's data from the run directory (the labels and examples it was built from, not a newer set), and
    the best model and the loop's result come back through it."""
    import torch

    from trainers.distributed import launch
    from trainers.reward.loop import LoopResult, best_model

    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in data.items() if k != "cache"}, run_dir / JOB_DATA)
    args = [kind, run_id, json.dumps(asdict(cfg)), parent_info[2] if parent_info else ""]
    launch("trainers.reward.job", args, settings.train_procs, settings, run_dir / "job.log")
    return best_model(model, run_dir), LoopResult(**json.loads((run_dir / "result.json").read_text()))


def train_reward(kind: str, run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
                 cfg: RewardTrainConfig | None = None) -> dict[str, Any]:
    """Train (or resume) run `run_id` of a `kind` reward model; returns its outputs (also on the run row)."""
    kind_trainer(kind)  # an unknown kind is refused before the run's row is written
    cfg = cfg or RewardTrainConfig()
    return run_once(sessions, run_id, f"reward-{kind}", {"config": asdict(cfg)},
                    lambda: _run(kind, run_id, sessions, store, settings, cfg))


def _run(kind: str, run_id: str, sessions: sessionmaker[Session], store: BlobStore, settings: Settings,
         cfg: RewardTrainConfig) -> dict[str, Any]:
    cache = settings.state_dir / "models"
    with sessions() as s:
        parent = promoted(s, kind)
        parent_info = (parent.id, parent.version, parent.checkpoint_key) if parent else None
    data = _data(kind, sessions, store, settings, cfg)
    cfg = cfg.sized_to(len(data["train"]))
    parent_dir = fetch_model_dir(store, parent_info[2], cache) if parent_info else None
    device = pick_device(settings.device)  # the worker's accelerator when it has one (EDITLOOP_DEVICE overrides)
    model, tokenizer = _start_model(kind, parent_dir, cfg, device)
    parent_score = None
    if parent_dir is not None:
        _, parent_model, parent_tok = load_reward(parent_dir, kind)
        parent_score, _ = _evaluate(kind, parent_model.to(device), parent_tok, data)

    run_dir = settings.state_dir / "runs" / run_id
    log.info("run %s reward-%s: %d training, %d checkpoint-choosing and %d held-out examples, starting from %s, "
             "%d steps on %s%s", run_id[:12], kind, len(data["train"]), len(data["select"]), len(data["eval"]),
             parent_info[1] if parent_info else "scratch", cfg.steps, device,
             f", {settings.train_procs} processes" if settings.train_procs > 1 else "")
    if settings.train_procs > 1:
        best, result = _train_distributed(kind, run_id, cfg, settings, parent_info, model, run_dir, data)
    else:
        best, result = _train(kind, model, tokenizer, data, cfg, run_dir,
                              logged(run_progress(sessions, run_id), run_id, f"reward-{kind}", run_dir=run_dir))
    score, metrics = _evaluate(kind, best, tokenizer, data)
    version = f"{kind}-{run_id[:12]}"
    metrics.update(eval_score=score, parent_eval_score=parent_score, best_step=result.best_step,
                   steps_done=result.steps_done, stopped_early=result.stopped_early)
    metrics["floor"] = chance_floor(kind, score, data, best)
    with tempfile.TemporaryDirectory() as tmp:  # saved from the CPU: the version loads anywhere
        save_reward(best.cpu(), kind, Path(tmp), version=version, extra={"trained": True, "run_id": run_id},
                    tokenizer=tokenizer)
        key = store_model_dir(store, Path(tmp))
    outputs = {"version": version, "checkpoint_key": key, "metrics": metrics, "history": result.history}
    with sessions.begin() as s:  # the parent is the version it was compared with
        register_and_gate(s, run_id, kind, version, key, metrics,
                          {"lineage": data["lineage"], "run_id": run_id, "train": asdict(cfg),
                           "parent_version": parent_info[1] if parent_info else None},
                          parent_info[0] if parent_info else None, outputs, load_check(kind, store, cache),
                          cfg.auto_promote, tolerance=cfg.tolerance, floor_alpha=settings.promotion_floor_alpha)
    log.info("run %s reward-%s: registered %s (held-out %.4f, parent %s); %s", run_id[:12], kind, version, score,
             "none" if parent_score is None else f"{parent_score:.4f}",
             "promoted" if outputs.get("promoted") else f"not promoted: {outputs.get('refused', 'auto_promote off')}")
    return outputs
