"""Client commands: `editloop generate|inpaint|outpaint|erase|edit` read and write PNG files over gRPC."""

from __future__ import annotations

import argparse
from pathlib import Path

from editloop.settings import Settings


def add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1, help="images to make")
    p.add_argument("--steps", type=int, default=0, help="0 = the model's default")
    p.add_argument("--guidance", type=float, default=0.0, help="0 = the model's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default="", help="ddim | euler | dpm")
    p.add_argument("--out", type=Path, default=Path("."), help="directory for the results")
    p.add_argument("--address", default=None, help="host:port (default: the running stack)")
    p.add_argument("--record", action="store_true", help="store and record the results")


def _params(args: argparse.Namespace):
    from services.gen.editloop.v1 import common_pb2

    return common_pb2.SamplingParams(steps=args.steps, guidance=args.guidance, seed=args.seed,
                                     scheduler=args.scheduler)


def _write(images, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = out / f"{stem}-{i}.png"
        path.write_bytes(img.png)
        paths.append(path)
    return paths


def generate(args: argparse.Namespace, settings: Settings) -> list[Path]:
    from editloop.cli.stack import service_address
    from services.core.channels import open_channel
    from services.gen.editloop.v1 import generator_pb2, generator_pb2_grpc

    address = args.address or service_address(settings, "generator")
    with open_channel(address, settings) as ch:
        stub = generator_pb2_grpc.GeneratorStub(ch)
        request = generator_pb2.GenerateRequest(prompt=args.prompt, num_images=args.n, params=_params(args),
                                                record=args.record)
        result = None
        from tqdm import tqdm

        with tqdm(desc="generate", unit="step") as bar:
            for event in stub.GenerateStream(request):
                if event.HasField("progress"):
                    bar.total = event.progress.total
                    bar.update(event.progress.step - bar.n)
                else:
                    result = event.result
    paths = _write(result.images, args.out, "generate")
    print(f"{result.model.name} {result.model.version}: wrote {', '.join(map(str, paths))}")
    return paths


def edit(kind: str, args: argparse.Namespace, settings: Settings) -> list[Path]:
    from editloop.cli.stack import service_address
    from services.core.channels import open_channel
    from services.gen.editloop.v1 import common_pb2, editor_pb2, editor_pb2_grpc

    address = args.address or service_address(settings, "editor")
    request = editor_pb2.InpaintRequest(
        image=common_pb2.Image(png=Path(args.image).read_bytes()),
        mask=common_pb2.Mask(png=Path(args.mask).read_bytes()),
        prompt=args.prompt or "", num_images=args.n, params=_params(args), record=args.record,
    )
    with open_channel(address, settings) as ch:
        stub = editor_pb2_grpc.EditorStub(ch)
        result = getattr(stub, kind.capitalize())(request, timeout=600)
    paths = _write(result.images, args.out, kind)
    print(f"{result.model.name} {result.model.version}: wrote {', '.join(map(str, paths))}")
    return paths


def instruct(args: argparse.Namespace, settings: Settings) -> list[Path]:
    """Instruction editing (Editor.Edit): image + instruction -> edited images."""
    from editloop.cli.stack import service_address
    from services.core.channels import open_channel
    from services.gen.editloop.v1 import common_pb2, editor_pb2, editor_pb2_grpc

    address = args.address or service_address(settings, "editor")
    request = editor_pb2.EditRequest(
        image=common_pb2.Image(png=Path(args.image).read_bytes()), instruction=args.instruction,
        num_images=args.n, params=_params(args), image_guidance=args.image_guidance, record=args.record,
        start=args.start,
    )
    with open_channel(address, settings) as ch:
        result = editor_pb2_grpc.EditorStub(ch).Edit(request, timeout=600)
    paths = _write(result.images, args.out, "edit")
    print(f"{result.model.name} {result.model.version} (start: {result.start}): wrote {', '.join(map(str, paths))}")
    return paths


def score(args: argparse.Namespace, settings: Settings) -> list[float]:
    from services.core.channels import open_channel
    from services.gen.editloop.v1 import common_pb2, reward_pb2, reward_pb2_grpc

    items = [reward_pb2.ScoreItem(image=common_pb2.Image(png=Path(p).read_bytes()), prompt=args.prompt or "")
             for p in args.images]
    from editloop.cli.stack import service_address

    address = args.address or service_address(settings, f"reward-{args.kind}")
    with open_channel(address, settings) as ch:
        result = reward_pb2_grpc.RewardStub(ch).Score(reward_pb2.ScoreRequest(items=items), timeout=120)
    for path, value in zip(args.images, result.scores):
        print(f"{value:+.4f}  {path}")
    print(f"scored by {result.model.name} {result.model.version}")
    return list(result.scores)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text-to-image through the generator service")
    p.add_argument("prompt")
    add_sampling(p)
    p.set_defaults(func=lambda a: bool(generate(a, Settings())) and 0)
    for kind in ("inpaint", "outpaint", "erase"):
        p = sub.add_parser(kind, help=f"{kind} through the editor service")
        p.add_argument("image", type=Path)
        p.add_argument("mask", type=Path, help="PNG mask, white = regenerate")
        p.add_argument("--prompt", default="", help="the scene to produce (required except for erase)")
        add_sampling(p)
        p.set_defaults(func=lambda a, kind=kind: bool(edit(kind, a, Settings())) and 0)
    p = sub.add_parser("edit", help="instruction editing through the editor service (SeedEdit)")
    p.add_argument("image", type=Path)
    p.add_argument("instruction", help='e.g. "make the red circle blue" (the Shapes World grammar)')
    p.add_argument("--image-guidance", type=float, default=0.0, help="image guidance scale; 0 = the model's default")
    p.add_argument("--start", choices=["noise", "input"], default="",
                   help="where sampling starts: pure noise or the noised input (default: the editor's default_start)")
    add_sampling(p)
    p.set_defaults(func=lambda a: bool(instruct(a, Settings())) and 0)
    p = sub.add_parser("score", help="score PNG files with a reward service")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--prompt", default="", help="caption or instruction (aesthetic and alignment)")
    p.add_argument("--kind", choices=["aesthetic", "alignment", "coherence"], default="aesthetic",
                   help="which reward service of the running stack (default aesthetic)")
    p.add_argument("--address", default=None, help="host:port of a reward service (default: the running stack's "
                                                   "service of --kind)")
    p.set_defaults(func=lambda a: score(a, Settings()) and 0)
