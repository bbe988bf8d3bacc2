"""`editloop demo`: the main job on the embedded default.

1. bring the stack up (generator and editor services, a Celery worker; SQLite, local blobs),
2. enqueue candidate sets for held-out captions on the queue; the worker generates and records them,
3. judge every candidate with the world's judge; a simulated annotator picks best and worst,
4. generate through the generator service and erase objects through the editor service,
5. write PNG grids and summary.json to --out, then stop the stack.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default")
    p.add_argument("--out", type=Path, default=Path(".editloop/demo"))
    p.add_argument("--prompts", type=int, default=4, help="held-out captions")
    p.add_argument("--candidates", type=int, default=4, help="images per candidate set")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=123)
    p.set_defaults(func=run_demo)


def candidate_sets(settings, scenes, args) -> list[dict]:  # noqa: ANN001
    """Enqueue one candidate set per scene; wait for the worker; read the images back."""
    from sqlalchemy import select

    from editloop.db import CandidateSet, make_engine, make_sessionmaker
    from editloop.store import open_store
    from editloop.world.io import from_png
    from trainers.celery_app import make_celery

    app = make_celery(settings)
    results = [app.send_task("editloop.gpu.generate_candidates",
                             args=[dict(prompt=s.caption, n=args.candidates, steps=args.steps, seed=args.seed + i,
                                        idempotency_key=f"demo-{args.seed}-{i}-{args.candidates}-{args.steps}")])
               for i, s in enumerate(scenes)]
    ids = [r.get(timeout=1800)["candidate_set_id"] for r in results]
    store = open_store(settings)
    sets = []
    with make_sessionmaker(make_engine(settings.resolved_database_url()))() as session:
        for set_id in ids:
            cs = session.scalars(select(CandidateSet).where(CandidateSet.id == set_id)).one()
            sets.append({"id": set_id, "images": [from_png(store.get(i.image.blob_key)) for i in cs.items],
                         "keys": [i.image.blob_key for i in cs.items]})
    return sets


def run_demo(args: argparse.Namespace) -> int:
    import grpc

    from editloop.cli.stack import running_stack
    from editloop.settings import Settings
    from editloop.world import cell_mask, compare, edit_success, judge, make_edit, panel, render, sample_scene
    from editloop.world.io import from_png, mask_to_png, save_grid_png, to_png
    from services.core.server import channel_options
    from services.gen.editloop.v1 import (
        common_pb2,
        editor_pb2,
        editor_pb2_grpc,
        generator_pb2,
        generator_pb2_grpc,
    )

    settings = Settings()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng) for _ in range(args.prompts)]
    summary: dict = {"state_dir": str(settings.state_dir.resolve())}
    print(f"1. starting the embedded stack (state in {settings.state_dir}, logs in {settings.state_dir / 'stack.log'})")
    with running_stack(settings, ports={"generator": 0, "editor": 0}, echo=False) as addresses:
        print(f"   up: {addresses}")
        # 2. candidate sets through the queue
        print(f"2. {len(scenes)} candidate sets of {args.candidates} on the queue ({args.steps} steps each)")
        sets = candidate_sets(settings, scenes, args)
        # 3. judge + simulated annotator
        annotator, rows, summary["candidate_sets"] = panel()[0], [], []
        for scene, cs in zip(scenes, sets):
            best, worst = annotator.best_worst(cs["images"], scene)
            correct = [compare(judge(im), scene).all_correct for im in cs["images"]]
            summary["candidate_sets"].append({"id": cs["id"], "caption": scene.caption, "judged_correct": correct,
                                              "annotator_best": best, "annotator_worst": worst,
                                              "blob_keys": cs["keys"]})
            rows.append([render(scene), *cs["images"]])
            print(f"   set {cs['id']}: {scene.caption!r}: judged correct {sum(correct)}/{len(correct)}, "
                  f"best #{best}, worst #{worst}")
        save_grid_png(rows, out / "candidates.png")
        # 4. the services, as a gRPC client sees them
        opts = channel_options(settings.max_message_mb)
        with grpc.insecure_channel(addresses["generator"], options=opts) as ch:
            resp = generator_pb2_grpc.GeneratorStub(ch).Generate(generator_pb2.GenerateRequest(
                prompt=scenes[0].caption, num_images=2, record=True,
                params=common_pb2.SamplingParams(steps=args.steps, seed=args.seed)))
        summary["generate"] = {"model": f"{resp.model.name} {resp.model.version}", "generation_id": resp.generation_id}
        print(f"3. Generator.Generate: 2 images by {resp.model.name} {resp.model.version}, "
              f"recorded as generation {resp.generation_id}")
        erase_rows, successes = [], []
        with grpc.insecure_channel(addresses["editor"], options=opts) as ch:
            stub = editor_pb2_grpc.EditorStub(ch)
            for i in range(4):
                edit = make_edit(sample_scene(rng, 2), "remove", rng)
                source = render(edit.source)
                resp = stub.Erase(editor_pb2.InpaintRequest(
                    image=common_pb2.Image(png=to_png(source)), mask=common_pb2.Mask(png=mask_to_png(edit.mask)),
                    prompt=edit.target.caption, record=True,
                    params=common_pb2.SamplingParams(steps=args.steps, seed=args.seed + i)))
                result = from_png(resp.images[0].png)
                successes.append(edit_success(judge(result), edit))
                overlay = source.copy()
                overlay[cell_mask(edit.removed.position) > 0] //= 2
                erase_rows.append([source, overlay, result])
        save_grid_png(erase_rows, out / "erase.png")
        summary["erase_success"] = successes
        print(f"4. Editor.Erase: {sum(successes)}/{len(successes)} objects judged gone")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"results: {out / 'candidates.png'} (column 1: the caption as the world renders it), "
          f"{out / 'erase.png'} (source, mask, result), {out / 'summary.json'}; "
          f"images and rows in {settings.state_dir}")
    return 0
