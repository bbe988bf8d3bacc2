"""SeedEdit alignment rounds: does each round make the instruction editor better? (issue 7)

    .venv/bin/python bench/edit_quality.py --out bench/results/edit_quality.json

1. Round 1 pairs from the weak generator: edit specs from the Shapes World, sources as degraded renders
   ("photos"; inputs only), targets by the base inpainting model (initialised from the text-to-image
   model) regenerating the edit region from the target caption; filtered (agreement, direction,
   similarity; counts recorded).
2. Each architecture (the causal two-branch editor, the InstructPix2Pix concat baseline) starts from the
   text-to-image UNet (or, `--init inpaint`, the concat editor from the inpainting UNet) and trains on the
   same kept pairs with the same steps and batch.
3. Round k > 1: each editor regenerates pairs for new instructions (new specs), they are filtered, and
   the editor is fine-tuned on all kept pairs so far.
4. After each round, on held-out scenes and instructions (clean renders, seeds apart from training),
   the world judge measures edit success, preservation and L1 outside the edit region, per edit kind;
   the weak generator itself (inpainting with the true edit mask, which the editors never get) is the
   reference row. A picture grid per round (OUT's name + _grid_roundK.png).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from editloop.models.base import base_fingerprint, load_base
from editloop.models.evaluate import inpaint
from editloop.models.instruct import InstructEditor, load_instruct_editor
from editloop.world.edits import EDIT_KINDS
from editloop.world.io import save_grid_png
from editloop.world.render import render
from trainers.align.editor_train import INITS, EditorTrainConfig, new_editor, train_editor
from trainers.align.evaluate import HELD_OUT_SEED, evaluate_editor, held_out_edits, judge_edits
from trainers.align.filters import AlignmentScorer, FilterConfig, JudgeScorer
from trainers.align.pairs import Pairs
from trainers.align.round_config import LATER_PAIRS, METHODS, RoundConfig
from trainers.align.select import kept_round_pairs


def weak_generator_row(edits: list, device: str) -> dict:
    """The round-1 pair generator as an editor: inpainting the true edit region from the target caption."""
    pipe = load_base("inpaint", device=device, dtype="fp32")
    sources = np.stack([render(e.source) for e in edits])
    outs = inpaint(pipe, sources, np.stack([e.mask for e in edits]), [e.target.caption for e in edits],
                   HELD_OUT_SEED, steps=20)
    return judge_edits(edits, sources, outs)


def later_filter_config(args: argparse.Namespace) -> FilterConfig:
    """Rounds 2+'s filters: round 1's, with the thresholds given for the editor's own pairs."""
    later = {"min_agreement": args.later_min_agreement, "max_outside_l1": args.later_max_outside_l1}
    return FilterConfig(**{k: v for k, v in later.items() if v is not None})


def save_fp16(editor: InstructEditor, dest: Path, meta: dict) -> None:
    """Save `editor` with an fp16 UNet and text encoder; the editor itself trains on in fp32, unrounded."""
    kept = [(m, {k: v.clone() for k, v in m.state_dict().items()}) for m in (editor.unet, editor.text_encoder)]
    for m, _ in kept:
        m.half()
    editor.save(dest, meta)
    for m, state in kept:
        m.float().load_state_dict(state)


def fmt(m: dict) -> str:
    return f"success {m['success']:.3f}  preservation {m['preservation']:.3f}  L1 outside {m['l1_outside']:.4f}"


NOT_RECIPE = ("out", "save_editor", "save_baseline", "rounds", "eval_per_kind", "checkpoint_every")
LATER_ROUNDS_ONLY = ("round_steps", "regen_steps", "later_min_agreement", "round1_editor", "candidates",
                     "balance_kinds", "later_max_outside_l1", "no_own_pairs", "later_pairs")


def recipe_key(args: argparse.Namespace, round_no: int) -> str:
    """Round k's checkpoints resume only a run of the same recipe up to round k (a run with other steps or
    another schedule must not pick up this one's editor). Output paths, the held-out set and the number of
    rounds are not part of it, and round 1's key leaves out what only later rounds use, so a longer run
    continues a shorter one's checkpoints and runs that differ only after round 1 share it."""
    skip = NOT_RECIPE + (LATER_ROUNDS_ONLY if round_no == 1 else ())
    recipe = {k: str(v) for k, v in sorted(vars(args).items()) if k not in skip}
    recipe["base"] = base_fingerprint()  # the committed base the pairs and the editors start from
    return hashlib.sha1(json.dumps(recipe).encode()).hexdigest()[:12]


def round1_editor(path: Path, args: argparse.Namespace) -> InstructEditor:
    """A saved editor standing in for round 1's training: only one this bench made with the same round-1 recipe
    (its editloop.json's made_by parses to the same round-1 key), one architecture, so round 2 starts where a
    full run would (up to the fp16 rounding of the saved weights). A run that trained both architectures side by
    side made each one as a run of that architecture alone would (each trains from its own seed on the shared
    pairs), so the saved run's `--archs` is compared only for holding the editor's architecture."""
    editor = load_instruct_editor(path, device=args.device)
    made_by = editor.meta.get("made_by", "")
    if not made_by.startswith("bench/edit_quality.py"):
        raise ValueError(f"`--round1-editor` {str(path)!r} was not made by bench/edit_quality.py: {made_by!r}")
    if editor.meta.get("round") != 1:
        raise ValueError(f"`--round1-editor` {str(path)!r} is a round-{editor.meta.get('round')} editor, not round 1's")
    made = parser().parse_args(shlex.split(made_by.split(";")[0])[1:])
    if editor.meta.get("base") != base_fingerprint():
        raise ValueError(f"`--round1-editor` {str(path)!r} was made from another base ({editor.meta.get('base')!r}; "
                         f"the committed base is {base_fingerprint()!r})")
    if args.archs != editor.arch or editor.arch not in made.archs.split(","):
        raise ValueError(f"`--archs` {args.archs!r} must be the round-1 editor's architecture ({editor.arch!r}), "
                         f"one its run trained ({made.archs!r})")
    made.archs = args.archs
    if recipe_key(made, 1) != recipe_key(args, 1):
        raise ValueError(f"`--round1-editor` {str(path)!r} was made by another round-1 recipe: {made_by!r}")
    return editor


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/edit_quality.json"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=320, help="edit specs per round")
    ap.add_argument("--steps", type=int, default=300, help="training steps in round 1")
    ap.add_argument("--round-steps", type=int, default=150, help="fine-tuning steps in each later round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--regen-steps", type=int, default=12, help="the editor's sampling steps when making pairs")
    ap.add_argument("--method", choices=METHODS, default="inpaint",
                    help="round 1's weak generator: the inpainting model over the true edit region, or the "
                         "text-to-image model making both images (RoundConfig.method)")
    ap.add_argument("--blend-until", type=float, default=1.0,
                    help="--method blend: the fraction of steps kept outside the edit region; 0 shares only the "
                         "initial noise (no edit region: SeedEdit's weak generator)")
    ap.add_argument("--eval-per-kind", type=int, default=8)
    ap.add_argument("--scorer", choices=["judge", "alignment"], default="judge")
    ap.add_argument("--alignment-reward", type=Path, default=None, help="an alignment reward directory")
    ap.add_argument("--archs", default="causal,concat")
    ap.add_argument("--schedule", choices=["zero-snr-v"], default=None,
                    help="train the editors on this schedule instead of the base's (editor_from_t2i)")
    ap.add_argument("--init", choices=INITS, default="t2i",
                    help="what the editors start from: the text-to-image model (InstructPix2Pix) or, for the concat "
                         "editor only, the inpainting model (editor_from_inpaint)")
    ap.add_argument("--later-min-agreement", type=float, default=None,
                    help="the agreement threshold for the editors' own pairs (rounds 2+; default: round 1's, "
                         f"{FilterConfig().min_agreement}); 1.0 keeps a pair only if the judge reads every attribute "
                         "of both captions in its images")
    ap.add_argument("--later-max-outside-l1", type=float, default=None,
                    help="rounds 2+: the most mean L1 outside the edit region an own pair may have (default: round "
                         f"1's, {FilterConfig().max_outside_l1}); the weak generator's round-1 pairs average about "
                         "0.015")
    ap.add_argument("--no-own-pairs", action="store_true",
                    help="rounds 2+: fine-tune on the earlier rounds' pairs alone, with the same steps (the control "
                         "for what the editor's own pairs add; no pairs are regenerated)")
    ap.add_argument("--candidates", type=int, default=1,
                    help="the editor's edits per instruction in rounds 2+ (each from its own seed); every one that "
                         "passes the filters is kept, so more candidates keep more of the editor's rare right edits")
    ap.add_argument("--later-pairs", choices=LATER_PAIRS, default="editor",
                    help="what rounds 2+ keep: every passing candidate (editor), the best per spec (editor-best), "
                         "the best per spec or else the weak generator's pair (best-or-weak), or the weak "
                         "generator's pairs alone (weak, a control); trainers/align/select.py")
    ap.add_argument("--balance-kinds", action="store_true",
                    help="rounds 2+: draw training examples by edit kind uniformly (EditorTrainConfig.balance_kinds), "
                         "so the editor's own pairs, which lean to the kinds it already does, crowd out no kind")
    ap.add_argument("--train-text-encoder", action="store_true",
                    help="train the text encoder with the UNet (EditorTrainConfig.train_text_encoder): the base's "
                         "learned captions only, not the instructions' verbs")
    ap.add_argument("--save-editor", type=Path, default=None,
                    help="save the causal editor here (fp16 UNet) after every round: it holds the last finished round")
    ap.add_argument("--save-baseline", type=Path, default=None,
                    help="save the concat editor here (fp16 UNet) after every round, likewise")
    ap.add_argument("--checkpoint-every", type=int, default=50,
                    help="training steps between resumable checkpoints (each step is seeded by its number: no effect "
                         "on results)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where the models run (fp32; TF32 matrix products on cuda); the judge runs on the CPU")
    ap.add_argument("--round1-editor", type=Path, default=None,
                    help="a saved round-1 editor of this recipe (its made_by) to start from instead of training "
                         "round 1 (it is still evaluated; its pairs are regenerated for the later rounds)")
    return ap


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(2)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    t_all = time.perf_counter()
    archs = args.archs.split(",")
    if args.scorer == "alignment":
        from trainers.feedback.rewards import load_rewards

        scorer = AlignmentScorer(load_rewards({"alignment": args.alignment_reward}))
    else:
        scorer = JudgeScorer()
    cfg = RoundConfig(pairs=args.pairs, pair_steps=12, method=args.method, blend_until=args.blend_until,
                      candidates=args.candidates, later_filter=later_filter_config(args), later_pairs=args.later_pairs)
    held = held_out_edits(args.eval_per_kind)
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "held_out": len(held), "rounds": []}
    print(f"held-out edits: {len(held)} ({args.eval_per_kind} per kind)", flush=True)
    result["weak_generator"] = weak_generator_row(held, args.device)
    print(f"weak generator (inpainting with the true mask): {fmt(result['weak_generator'])}", flush=True)

    bases: dict = {}
    if args.round1_editor is not None:
        editors: dict[str, InstructEditor] = {archs[0]: round1_editor(args.round1_editor, args)}
    else:
        editors = {a: new_editor(a, args.init, args.schedule, args.device, bases) for a in archs}
    kept_so_far: dict[str, list] = {a: [] for a in archs}
    run_root = Path(".editloop/bench/edit_quality")  # checkpoints: outside the repository
    for round_no in range(1, args.rounds + 1):
        row: dict = {"round": round_no, "archs": {}}
        shared = None
        if round_no == 1:  # the weak generator's pairs, shared by both architectures
            t0 = time.perf_counter()
            kept, counts = kept_round_pairs(1, cfg, None, scorer, args.device)
            shared = (kept, counts, time.perf_counter() - t0)
            print(f"round 1 pairs: kept {counts['kept']} of {counts['total']} ({counts['after']})", flush=True)
        outputs = {}
        for arch in archs:
            editor = editors[arch]
            t0 = time.perf_counter()
            if shared is not None:
                kept, counts, gen_s = shared
            elif args.no_own_pairs:  # the control: the same fine-tuning on the earlier rounds' pairs alone
                kept, gen_s = kept_so_far[arch][0].select(np.zeros(0, dtype=np.int64)), 0.0
                counts = {"total": 0, "kept": 0, "after": {}, "skipped": "--no-own-pairs"}
                print(f"round {round_no} {arch}: no own pairs (--no-own-pairs)", flush=True)
            else:
                kept, counts = kept_round_pairs(round_no, replace(cfg, pair_steps=args.regen_steps), editor, scorer,
                                                args.device)
                gen_s = time.perf_counter() - t0
                chosen = f", best per spec {counts['best_per_spec']}" if "best_per_spec" in counts else ""
                filled = f", weak generator's {counts['weak']['filled']}" if "weak" in counts else ""
                print(f"round {round_no} {arch} pairs: kept {counts['kept']} of {counts['total']} "
                      f"({counts['after']}{chosen}{filled})", flush=True)
            kept_so_far[arch].append(kept)
            train_pairs = Pairs.concat(kept_so_far[arch])
            steps = args.steps if round_no == 1 else args.round_steps
            tcfg = EditorTrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr,
                                     warmup=50 if round_no == 1 else 10, seed=round_no,
                                     checkpoint_every=args.checkpoint_every,
                                     train_text_encoder=args.train_text_encoder,
                                     balance_kinds=args.balance_kinds and round_no > 1)
            t1 = time.perf_counter()
            if round_no == 1 and args.round1_editor is not None:
                print(f"round 1 {arch}: the saved editor {args.round1_editor} (not retrained)", flush=True)
                final_loss = None
            else:
                ckpt_dir = run_root / recipe_key(args, round_no) / f"{arch}-r{round_no}"
                final_loss = train_editor(editor, train_pairs, tcfg, ckpt_dir).history[-1]["loss_ema"]
            train_s = time.perf_counter() - t1
            metrics, outs = evaluate_editor(editor, held)
            outputs[arch] = outs
            row["archs"][arch] = {**metrics, "filter": counts, "train_pairs": len(train_pairs),
                                  "pair_seconds": gen_s, "train_seconds": train_s,
                                  "seconds_per_step": train_s / steps, "final_loss": final_loss}
            print(f"round {round_no} {arch}: {fmt(metrics)}  ({len(train_pairs)} pairs, {steps} steps, "
                  f"{train_s / steps:.2f} s/step)", flush=True)
        result["rounds"].append(row)
        pick = [i for k in EDIT_KINDS for i in [j for j, e in enumerate(held) if e.kind == k][:2]]
        grid = [[render(held[i].source) for i in pick]] + [[outputs[a][i] for i in pick] for a in archs]
        save_grid_png(grid, args.out.with_name(f"{args.out.stem}_grid_round{round_no}.png"), ["source", *archs],
                      [f"{held[i].kind}: {held[i].instruction}" for i in pick], f"round {round_no}: held-out edits")
        args.out.write_text(json.dumps(result, indent=2, default=float))
        for arch, dest in (("causal", args.save_editor), ("concat", args.save_baseline)):
            if dest and arch in editors:  # after every round, so a run cut off keeps its last finished round
                save_fp16(editors[arch], dest, {"version": f"bench-{arch}-r{round_no}", "round": round_no,
                                                "made_by": " ".join(sys.argv), "base": base_fingerprint()})
    result["seconds"] = time.perf_counter() - t_all
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print_table(result, archs)


def print_table(result: dict, archs: list[str]) -> None:
    print("\n| round | editor | pairs kept / made | success | preservation | L1 outside |")
    print("| --- | --- | --- | --- | --- | --- |")
    w = result["weak_generator"]
    print(f"| - | weak generator (true mask) | - | {w['success']:.3f} | {w['preservation']:.3f} | "
          f"{w['l1_outside']:.4f} |")
    for row in result["rounds"]:
        for a in archs:
            m = row["archs"][a]
            print(f"| {row['round']} | {a} | {m['filter']['kept']} / {m['filter']['total']} | {m['success']:.3f} | "
                  f"{m['preservation']:.3f} | {m['l1_outside']:.4f} |")
    print("\nper kind (success / preservation), last round:")
    last = result["rounds"][-1]["archs"]
    for k in EDIT_KINDS:
        cells = "  ".join(f"{a} {last[a]['per_kind'][k]['success']:.2f}/{last[a]['per_kind'][k]['preservation']:.2f}"
                          for a in archs if k in last[a]["per_kind"])
        print(f"  {k:10s} {cells}")


if __name__ == "__main__":
    main()
