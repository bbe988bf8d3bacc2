"""Aesthetic reward R_a: Bradley-Terry on best/worst answers, loss = -log sigmoid(R(win) - R(lose))."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from editloop.models.reward import PreferenceReward
from trainers.reward.data import ImageCache, Pair, PairBatch, endless_batches, make_batch
from trainers.reward.loop import LoopConfig, LoopResult, train_loop


def tokenize(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt")
    return tok.input_ids, tok.attention_mask


def score(model: PreferenceReward, tokenizer: PreTrainedTokenizerFast, images: torch.Tensor, prompts: list[str],
          source: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """R(c, x) on the model's device (the inputs are moved there; the batches are built on the CPU)."""
    device = next(model.parameters()).device
    ids, attn = tokenize(tokenizer, prompts)
    source, mask = (None if t is None else t.to(device) for t in (source, mask))
    return model(images.to(device), ids.to(device), attn.to(device), source, mask)


def pair_margin(model: PreferenceReward, tokenizer: PreTrainedTokenizerFast, batch: PairBatch) -> torch.Tensor:
    """R(win) - R(lose), both images scored in one forward pass."""
    n = batch.win.shape[0]
    source = torch.cat([batch.source, batch.source]) if batch.source is not None else None
    mask = torch.cat([batch.mask, batch.mask]) if batch.mask is not None else None
    scores = score(model, tokenizer, torch.cat([batch.win, batch.lose]), batch.prompts * 2, source, mask)
    return scores[:n] - scores[n:]


@torch.no_grad()
def pairwise_accuracy(model: PreferenceReward, tokenizer: PreTrainedTokenizerFast, pairs: list[Pair],
                      cache: ImageCache, batch_size: int = 128) -> float:
    """Share of pairs the model orders as the label does (ties count half)."""
    model.eval()
    hits = []
    for start in range(0, len(pairs), batch_size):
        margin = pair_margin(model, tokenizer, make_batch(pairs[start:start + batch_size], cache))
        hits.append(((margin > 0).float() + 0.5 * (margin == 0).float()).cpu().numpy())
    return float(np.concatenate(hits).mean()) if hits else float("nan")


@torch.no_grad()
def calibration_error(model: PreferenceReward, tokenizer: PreTrainedTokenizerFast, pairs: list[Pair],
                      cache: ImageCache, bins: int = 10, batch_size: int = 128) -> float:
    """Expected calibration error of P(label's winner wins) = sigmoid(margin), over `bins` confidence bins."""
    model.eval()
    probs = []
    for start in range(0, len(pairs), batch_size):
        probs.append(torch.sigmoid(pair_margin(model, tokenizer, make_batch(pairs[start:start + batch_size],
                                                                               cache))).cpu().numpy())
    p = np.concatenate(probs)
    confidence, correct = np.maximum(p, 1 - p), (p > 0.5).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def train_aesthetic(model: PreferenceReward, tokenizer: PreTrainedTokenizerFast, train: list[Pair],
                    held_out: list[Pair], cache: ImageCache, cfg: LoopConfig, run_dir: Path, batch_size: int = 64,
                    progress=None, mirror: bool = False) -> tuple[PreferenceReward, LoopResult]:
    """Bradley-Terry on `train`, the best checkpoint by pairwise accuracy on `held_out`; `mirror`: see
    trainers.reward.data.mirror_half. A model trained on any pair with a source image records `reads_source`
    (feedback learning then scores each edit with its source and mask)."""
    if any(p.source for p in train):
        model.register_to_config(reads_source=True)

    def loss_fn(m: PreferenceReward, batch: PairBatch) -> torch.Tensor:
        return -F.logsigmoid(pair_margin(m, tokenizer, batch)).mean()

    batches = endless_batches(train, batch_size, cache, cfg.seed, mirror)
    return train_loop(model, batches, loss_fn, lambda m: pairwise_accuracy(m, tokenizer, held_out, cache), cfg,
                      run_dir, progress)


# ---- the aesthetic kind's trainer (trainers/reward/kinds.py): the best/worst labels in the database ----

def _data(sessions, store, settings, cfg) -> dict:
    import hashlib
    import json

    from trainers.reward.data import preference_pairs

    with sessions() as s:
        pairs = preference_pairs(s, store, min_labels=cfg.min_labels, select_fraction=cfg.select_fraction)
    # the best checkpoint is chosen on held-out sets of its own, so the held-out score the gate and the chance floor
    # read was not chosen on; with no such set yet (a few labels) it is chosen on the training pairs
    select = pairs.select or pairs.train
    return {"train": pairs.train, "select": select, "eval": pairs.eval, "cache": ImageCache(store),
            "lineage": {"labels": len(pairs.label_ids), "label_ids_sha256": hashlib.sha256(
                json.dumps(pairs.label_ids).encode()).hexdigest(), "max_label_id": max(pairs.label_ids),
                "train_pairs": len(pairs.train), "eval_pairs": len(pairs.eval),
                "select_pairs": len(pairs.select), "selected_on": "held-out sets" if pairs.select else "train pairs",
                "skipped": pairs.skipped}}


def _train(model, tokenizer, data: dict, cfg, run_dir: Path, progress) -> tuple[object, LoopResult]:
    return train_aesthetic(model, tokenizer, data["train"], data["select"], data["cache"],
                           cfg.loop(), run_dir, cfg.batch_size, progress, mirror=cfg.mirror)


def _evaluate(model, tokenizer, data: dict) -> tuple[float, dict[str, float]]:
    acc = pairwise_accuracy(model, tokenizer, data["eval"], data["cache"])
    return acc, {"pairwise_accuracy": acc,
                 "calibration_error": calibration_error(model, tokenizer, data["eval"], data["cache"])}


def _floor(score: float, data: dict, model) -> tuple[int, int, str]:
    """A set's pairs share one label, so held-out candidate sets are the independent units (a set counts as right
    in the proportion of its pairs, rounded over all sets)."""
    units = len({p.set_id for p in data["eval"]})
    return (int(round(score * units)) if score == score else 0), units, "held-out candidate sets"


def _held_out(model, tokenizer, sessions, store, settings, n: int | None) -> tuple[str, dict]:
    from trainers.evaluation.rewards import labelled_accuracy

    metrics = labelled_accuracy(sessions, store, model, tokenizer)
    return "labelled held-out pairs", {**metrics, "accuracy": metrics.get("labelled_accuracy")}


def _attach(data: dict, store) -> dict:
    return {**data, "cache": ImageCache(store)}


def _register() -> None:
    from trainers.reward.kinds import KindTrainer, register_trainer

    register_trainer(KindTrainer("aesthetic", _data, _train, _evaluate, _floor, _held_out, _attach))


_register()
