"""Guidance sweep for a saved instruction editor: judged success, preservation and L1 outside the edit region
on the held-out edits of bench/edit_quality.py, for each (text, image) guidance pair.

    .venv/bin/python bench/edit_guidance.py editloop/weights/instruct --out bench/results/edit_guidance.json
"""

from __future__ import annotations

import argparse
import json
from itertools import product
from pathlib import Path

import torch

from editloop.models.instruct import load_instruct_editor
from trainers.align.evaluate import evaluate_editor, held_out_edits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results/edit_guidance.json"))
    ap.add_argument("--eval-per-kind", type=int, default=8)
    ap.add_argument("--text", default="5,3", help="text guidance scales")
    ap.add_argument("--image", default="1.5,3,5", help="image guidance scales")
    ap.add_argument("--start", default="noise", help="where sampling starts: noise, input or both (noise,input)")
    ap.add_argument("--rescale", default="0", help="guidance rescale phi values (Lin et al. 2024; 0 = plain CFG)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    editor = load_instruct_editor(args.model, device="cpu")
    held = held_out_edits(args.eval_per_kind)
    rows = []
    for start in args.start.split(","):
        for s_t, s_i, phi in product(*(map(float, v.split(",")) for v in (args.text, args.image, args.rescale))):
            m, _ = evaluate_editor(editor, held, text_guidance=s_t, image_guidance=s_i, start=start,
                                   guidance_rescale=phi)
            rows.append({"start": start, "text_guidance": s_t, "image_guidance": s_i, "guidance_rescale": phi,
                         **{k: m[k] for k in ("success", "preservation", "l1_outside")}, "per_kind": m["per_kind"],
                         "per_edit": m["per_edit"]})
            print(f"start {start:5s} text {s_t:4.1f} image {s_i:4.1f} rescale {phi:3.1f}: success {m['success']:.3f}  "
                  f"preservation {m['preservation']:.3f}  L1 outside {m['l1_outside']:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "held_out": len(held), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
