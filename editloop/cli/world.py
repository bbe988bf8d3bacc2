"""`editloop world ...`: sample, render, judge, caption, pretrain."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="the Shapes World: sample, render, judge, caption, pretrain")
    wsub = world.add_subparsers(dest="world_command", required=True)

    p = wsub.add_parser("sample", help="write DIR/NNNN.png and DIR/scenes.jsonl")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clean", action="store_true", help="no degradations")
    p.add_argument("--q", type=float, default=1.0, help="quality-mix scale in [0, 1] (default 1)")
    p.set_defaults(func=_sample)

    p = wsub.add_parser("render", help="render one scene JSON to a PNG")
    p.add_argument("scene_json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="seed for the degradation draws")
    p.add_argument("--quality", type=float, default=0.0, help="q in [0, 1]; 0 = clean (default)")
    p.set_defaults(func=_render)

    p = wsub.add_parser("judge", help="print one judged scene JSON per image")
    p.add_argument("files", nargs="+", type=Path)
    p.set_defaults(func=_judge)

    p = wsub.add_parser("caption", help="print the caption of a scene JSON")
    p.add_argument("scene_json")
    p.set_defaults(func=_caption)

    p = wsub.add_parser("pretrain", help="train the base VAE, text-to-image and inpainting models")
    from trainers.pretrain.config import add_pretrain_arguments

    add_pretrain_arguments(p)
    p.set_defaults(func=_pretrain)

    p = wsub.add_parser("export-base", help="copy a finished pretraining run into editloop/weights/base")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=_export_base)


def _sample(args: argparse.Namespace) -> int:
    from editloop.world.dataset import iter_samples, write_samples

    count = write_samples(iter_samples(args.seed, args.n, q=args.q, clean=args.clean), args.out)
    print(f"wrote {count} images and scenes.jsonl to {args.out}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from editloop.world.io import save_png
    from editloop.world.render import Quality, render, sample_quality
    from editloop.world.scene import Scene

    scene = Scene.from_json(args.scene_json)
    rng = np.random.default_rng(args.seed)
    quality = sample_quality(rng, len(scene.objects), args.quality) if args.quality > 0 else Quality()
    save_png(render(scene, quality), args.out)
    return 0


def _judge(args: argparse.Namespace) -> int:
    from editloop.world.io import load_png
    from editloop.world.judge import judge

    for path in args.files:
        print(json.dumps(judge(load_png(path)).to_dict()))
    return 0


def _caption(args: argparse.Namespace) -> int:
    from editloop.world.scene import Scene

    print(Scene.from_json(args.scene_json).caption)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from trainers.pretrain.config import config_from_args
    from trainers.pretrain.run import run_pretrain

    run_pretrain(config_from_args(args))
    return 0


def _export_base(args: argparse.Namespace) -> int:
    from editloop.models.base import export_base

    for path in export_base(args.run_dir):
        print(f"wrote {path}")
    return 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
