"""How far apart a text encoder puts two sentences one word apart: words it learned and words it did not.

    .venv/bin/python bench/instruction_states.py [--model DIR ...]     # seconds on 2 CPU cores

The base text encoder (editloop/weights/base) learned captions only ("a small red circle at the top left"),
so the words only instructions use ("larger", "smaller", the verbs) keep their random initial embeddings;
and it learned each caption word only as far as the text-to-image loss asked it to. For every (colour,
shape) of the world, each row swaps one word and measures the relative distance of the encoder's states,
|s(a) - s(b)| / |s(a)| over the whole padded sequence (as the UNet's cross-attention reads it; the padding
tokens attend to every word before them); the mean over the world's objects is reported. `--model` measures
another model's text encoder too (an instruction editor trained with `train_text_encoder`, a pretrain run
directory). Writes bench/results/instruction_states.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from editloop.models.configs import TINY_TEXT
from editloop.models.pipeline_io import encode_texts
from editloop.models.tokenizer import build_tokenizer
from editloop.world.palette import COLORS, SHAPES

RESULTS = Path(__file__).resolve().parents[1] / "results"
BASE = Path(__file__).resolve().parents[2] / "editloop" / "weights" / "base" / "t2i"
# (row name, trained word?, two grammatical sentences one word apart; {o} is "red circle", {c2} {c3} others)
SWAPS = (
    ("instruction: larger / smaller", False, "make the {o} larger", "make the {o} smaller"),
    ("instruction: target colour", True, "make the {o} {c2}", "make the {o} {c3}"),
    ("instruction: top left / top right", True, "move the {o} to the top left", "move the {o} to the top right"),
    ("caption: large / small", True, "a large {o} at the top left", "a small {o} at the top left"),
    ("caption: top left / top right", True, "a large {o} at the top left", "a large {o} at the top right"),
    ("caption: top left / bottom right", True, "a large {o} at the top left", "a large {o} at the bottom right"),
    ("caption: colour", True, "a large {o} at the top left", "a large {c2} {shape} at the top left"),
)


def relative_distances(tokenizer, text_encoder: CLIPTextModel, firsts: list[str],
                       seconds: list[str]) -> tuple[float, float]:
    """Mean relative distance of the states of sentence pairs: over the whole padded sequence, and at the
    first token where the two differ (the swapped word itself)."""
    ids = [tokenizer(t, padding="max_length", max_length=tokenizer.model_max_length).input_ids
           for t in (firsts, seconds)]
    at = torch.tensor([next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y) for a, b in zip(*ids)])
    sa, sb = encode_texts(tokenizer, text_encoder, firsts), encode_texts(tokenizer, text_encoder, seconds)
    whole = (sa - sb).flatten(1).norm(dim=1) / sa.flatten(1).norm(dim=1)
    rows = torch.arange(len(at))
    word = (sa[rows, at] - sb[rows, at]).norm(dim=1) / sa[rows, at].norm(dim=1)
    return round(whole.mean().item(), 4), round(word.mean().item(), 4)


def swap_distances(text_encoder: CLIPTextModel) -> dict[str, dict[str, float]]:
    """Per row of SWAPS, the mean relative state distance over every (colour, shape) of the world: over the
    whole sequence and at the swapped word."""
    tokenizer = build_tokenizer()
    colors = list(COLORS)
    out = {}
    for name, _, a, b in SWAPS:
        firsts, seconds = [], []
        for k, color in enumerate(colors):
            c2, c3 = colors[(k + 1) % len(colors)], colors[(k + 2) % len(colors)]
            for shape in SHAPES:
                fill = dict(o=f"{color} {shape}", c2=c2, c3=c3, shape=shape)
                firsts.append(a.format(**fill))
                seconds.append(b.format(**fill))
        whole, word = relative_distances(tokenizer, text_encoder, firsts, seconds)
        out[name] = {"sequence": whole, "word": word}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, action="append", default=[],
                    help="another model directory with a text_encoder/ (an instruction editor, a pretrain run)")
    ap.add_argument("--checkpoint", type=Path, action="append", default=[],
                    help="a pretrain checkpoint (RUN/checkpoints/t2i.pt): its text encoder at that step (not EMA)")
    ap.add_argument("--out", type=Path, default=RESULTS / "instruction_states.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {}
    for label, path in {"base text encoder": BASE, **{str(p): p for p in args.model}}.items():
        te = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True).float().eval()
        results[label] = swap_distances(te)
    for path in args.checkpoint:
        state = torch.load(path, map_location="cpu", weights_only=False)
        te = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
        te.load_state_dict(state["text_encoder"])
        results[f"{path} step {state['step']}"] = swap_distances(te.eval())
    trained = {name: ok for name, ok, _, _ in SWAPS}
    print(f"| row (sequence / swapped word) | trained word | {' | '.join(results)} |")
    print("| --- | --- |" + " --- |" * len(results))
    for name in trained:
        cells = " | ".join(f"{r[name]['sequence']:.3f} / {r[name]['word']:.3f}" for r in results.values())
        print(f"| {name} | {'yes' if trained[name] else 'no'} | {cells} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"trained_word": trained, "relative_distance": results}, indent=2))


if __name__ == "__main__":
    main()
