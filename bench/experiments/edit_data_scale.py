"""How much of the instruction editor's failure is too few pairs? (issue 7)

    .venv/bin/python bench/edit_data_scale.py --pairs 320,1280 --out bench/results/edit_data_scale.json

Round-1 pairs of bench/edit_quality.py (the weak generator: degraded renders as sources, the inpainting model
regenerating the edit region from the target caption; filtered the same way) for the largest count asked; each
smaller set is its prefix (edit specs, sources and seeds are drawn per position, so the first n of a large set
are the set of n). For each size one editor is trained with the same recipe (steps, batch, lr), then measured:
- the denoising loss on its own training pairs and on held-out weak-generator pairs (other specs and seeds), at
  fixed noise and timesteps: a gap between them is memorisation;
- the world judge on the held-out edits of bench/edit_quality.py (success, preservation, L1 outside the edit
  region).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from editloop.models.instruct import InstructEditor
from editloop.models.zoo import training_scheduler
from trainers.align.editor_train import INITS, EditorTrainConfig, editor_loss, new_editor, train_editor
from trainers.align.evaluate import evaluate_editor, held_out_edits
from trainers.align.filters import FilterConfig, JudgeScorer, filter_pairs
from trainers.align.pairs import Pairs
from trainers.align.round_config import RoundConfig, round_pairs

VALIDATION_SEED = 90  # RoundConfig.seed for the held-out pairs (training rounds use seed 0)


@torch.no_grad()
def denoising_loss(editor: InstructEditor, pairs: Pairs, batch: int = 64, seed: int = 0) -> float:
    """Mean Min-SNR-weighted training loss over `pairs` (text and image kept), at noise and timesteps fixed by
    `seed`: comparable between pair sets and editors."""
    scheduler = training_scheduler(editor.scheduler.config)
    empty = editor.encode_text([""])
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    for i in range(0, len(pairs), batch):
        src = editor.encode_images(pairs.sources[i : i + batch])
        tgt = editor.encode_images(pairs.targets[i : i + batch])
        text = editor.encode_text(pairs.instructions[i : i + batch])
        sees = torch.ones(len(src), dtype=torch.bool, device=src.device)
        total += float(editor_loss(editor, scheduler, src, tgt, text, empty, sees, gen, 5.0)) * len(src)
        n += len(src)
    if editor.branches is not None:
        editor.branches.clear()
    return total / n


def filtered_pairs(n: int, seed: int) -> tuple[Pairs, np.ndarray, dict]:
    """Round-1 pairs for `n` edit specs, the filters' keep flags and counts."""
    pairs = round_pairs(1, RoundConfig(pairs=n, pair_steps=12, seed=seed), None, "cpu")
    keep, counts = filter_pairs(pairs, JudgeScorer(), FilterConfig())
    return pairs, keep, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/edit_data_scale.json"))
    ap.add_argument("--pairs", default="320,1280", help="edit specs per training set (each a prefix of the largest)")
    ap.add_argument("--validation-pairs", type=int, default=128)
    ap.add_argument("--arch", choices=["causal", "concat"], default="concat")
    ap.add_argument("--init", choices=INITS, default="inpaint")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--eval-per-kind", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    sizes = sorted(int(x) for x in args.pairs.split(","))
    every, keep, counts = filtered_pairs(sizes[-1], seed=0)
    validation_all, validation_keep, _ = filtered_pairs(args.validation_pairs, seed=VALIDATION_SEED)
    validation = validation_all.select(validation_keep)
    held = held_out_edits(args.eval_per_kind)
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "filter": counts,
                    "validation_pairs": len(validation), "held_out": len(held), "rows": []}
    print(f"pairs: kept {counts['kept']} of {counts['total']}; validation {len(validation)}", flush=True)
    bases: dict = {}
    for n in sizes:
        train = every.select(keep & (np.arange(len(every)) < n))
        editor = new_editor(args.arch, args.init, None, "cpu", bases)
        before = {"train_loss": denoising_loss(editor, train), "validation_loss": denoising_loss(editor, validation)}
        cfg = EditorTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, checkpoint_every=args.steps)
        t0 = time.perf_counter()
        run_dir = Path(".editloop/bench/edit_data_scale") / f"{args.arch}-{args.init}-{n}-{args.steps}-{args.lr}"
        train_editor(editor, train, cfg, run_dir)
        train_s = time.perf_counter() - t0
        after = {"train_loss": denoising_loss(editor, train), "validation_loss": denoising_loss(editor, validation)}
        metrics, _ = evaluate_editor(editor, held)
        row = {"specs": n, "train_pairs": len(train), "epochs": args.steps * args.batch_size / len(train),
               "before": before, "after": after, "train_seconds": train_s,
               **{k: metrics[k] for k in ("success", "preservation", "l1_outside", "per_kind")}}
        result["rows"].append(row)
        print(f"{n} specs ({len(train)} pairs, {row['epochs']:.0f} epochs): loss train {before['train_loss']:.4f} -> "
              f"{after['train_loss']:.4f}, validation {before['validation_loss']:.4f} -> "
              f"{after['validation_loss']:.4f}; success {metrics['success']:.3f}  preservation "
              f"{metrics['preservation']:.3f}  L1 outside {metrics['l1_outside']:.4f}", flush=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))
    result["seconds"] = time.perf_counter() - t_all
    args.out.write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
