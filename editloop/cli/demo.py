"""`editloop demo`: the main job on the embedded default.

1. bring the stack up (generator and editor services, a Celery worker; SQLite, local blobs),
2. enqueue candidate sets for held-out captions on the queue; the worker generates and records them,
3. judge every candidate with the world's judge; a simulated annotator picks best and worst,
4. generate through the generator service, erase objects through the editor service, and edit by
   instruction (SeedEdit's editor: the promoted one, else the committed one) through Editor.Edit,
5. Label Studio (installed into its own virtualenv on first use): push the candidate sets with
   overlap 2, simulated annotators label them through its API, sync the labels, print statistics,
6. reward models: a short alignment-reward run on the queue (the stack's worker trains it, registers
   a candidate version and promotes it through the gate; the aesthetic reward too once the labels
   suffice), then a reward service on the promoted version scores captions against hard negatives,
7. one feedback round (ByteEdit's PeFL) on the queue against the promoted reward models; the worker
   fine-tunes the inpainting model, evaluates it on held-out examples against the model it started
   from and promotes it only if it is better; before/after images go to feedback.png,
8. write PNG grids and summary.json to --out, then stop the stack (and Label Studio, if it started it).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from editloop import queue

if TYPE_CHECKING:
    from editloop.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default")
    p.add_argument("--out", type=Path, default=Path(".editloop/demo"))
    p.add_argument("--full", action="store_true",
                   help="the longer tour: 4 images per set, 150-step reward runs on more data, 40 PeFL steps "
                        "(about twice as long; README says how long each took here)")
    p.add_argument("--prompts", type=int, default=None, help="held-out captions (12 x overlap 2 = 24 labels)")
    p.add_argument("--candidates", type=int, default=None, help="images per candidate set (3; --full 4)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (20)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--no-label-studio", action="store_true", help="skip step 5 (labelling in Label Studio)")
    p.add_argument("--keep-label-studio", action="store_true", help="leave Label Studio up afterwards")
    p.add_argument("--reward-steps", type=int, default=None,
                   help="steps of the demo's reward runs (40; --full 150; 0 skips step 6)")
    p.add_argument("--feedback-steps", type=int, default=None, help="PeFL steps of step 7 (16; --full 40; 0 skips it)")
    p.set_defaults(func=run_demo)


def _finished(sessions, run_id: str, label: str) -> dict:
    """Follow a run with a progress bar; its outputs when it succeeded, else RuntimeError with its error."""
    from editloop.cli.progress import follow_run

    ended = follow_run(sessions, run_id, label)
    if ended["status"] != "succeeded":
        raise RuntimeError(f"{label.strip()} {run_id} {ended['status']}: {ended['error']}")
    return ended["outputs"]


# The quick tour (the default: about 10 minutes after the install on the project's 2-core machine) and the longer one.
PROFILES = {
    "quick": {"prompts": 12, "candidates": 3, "steps": 20, "reward_steps": 40, "feedback_steps": 16,
              "alignment_train": 400, "alignment_eval": 400, "feedback_eval": 8},
    "full": {"prompts": 12, "candidates": 4, "steps": 20, "reward_steps": 150, "feedback_steps": 40,
             "alignment_train": 1000, "alignment_eval": 1000, "feedback_eval": 12},
}


def resolve_profile(args: argparse.Namespace) -> dict:
    """The tour's sizes: the profile's, with every flag given on the command line in its place."""
    sizes = dict(PROFILES["full" if args.full else "quick"])
    for key in ("prompts", "candidates", "steps", "reward_steps", "feedback_steps"):
        value = getattr(args, key)
        if value is not None:
            if value < (0 if key in ("reward_steps", "feedback_steps") else 1):
                raise ValueError(f"`--{key.replace('_', '-')}` must be >= "
                                 f"{0 if key in ('reward_steps', 'feedback_steps') else 1}, got {value}")
            sizes[key] = value
        setattr(args, key, sizes[key])
    return sizes


def train_rewards(settings, steps: int, sizes: dict) -> dict:
    """Step 6: reward runs through the queue, then score through a reward service on the promoted version."""
    import asyncio

    from sqlalchemy import func, select

    from editloop.cli.train import enqueue_reward_run
    from editloop.db import Preference, make_engine, make_sessionmaker
    from editloop.world.io import to_png
    from services.app import start_service
    from services.core.channels import open_aio_channel
    from services.gen.editloop.v1 import common_pb2, reward_pb2, reward_pb2_grpc
    from trainers.reward.alignment import alignment_examples

    out = {}
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
    with sessions() as s:
        labels = s.scalar(select(func.count()).select_from(Preference).where(Preference.status == "valid"))
    runs = {"alignment": {"steps": steps, "alignment_train": sizes["alignment_train"],
                          "alignment_eval": sizes["alignment_eval"], "eval_every": max(steps // 3, 1)}}
    if labels >= 20:
        runs["aesthetic"] = {"steps": steps, "eval_every": max(steps // 3, 1)}
    else:
        print(f"   aesthetic reward: {labels} labels, fewer than the 20 a run needs (run the demo with more --prompts)")
    for kind, config in runs.items():
        run_id = enqueue_reward_run(settings, kind, config, "demo")
        result = _finished(sessions, run_id, f"   {kind} reward run")
        out[kind] = {"version": result["version"], "promoted": result.get("promoted"),
                     "eval_score": result["metrics"]["eval_score"]}
        print(f"   {kind} reward run {run_id[:8]}: version {result['version']}, held-out score "
              f"{result['metrics']['eval_score']:.3f}, promoted: {result.get('promoted')} {result.get('refused', '')}")
    examples = alignment_examples(32, 777)

    async def score() -> tuple[float, str]:
        running = await start_service("reward", settings, None, reward_kind="alignment")
        try:
            async with open_aio_channel(f"127.0.0.1:{running.port}", settings) as ch:
                stub = reward_pb2_grpc.RewardStub(ch)
                items = [reward_pb2.ScoreItem(image=common_pb2.Image(png=to_png(e.image)), prompt=p)
                         for e in examples for p in (e.caption, e.negative)]
                resp = await stub.Score(reward_pb2.ScoreRequest(items=items))
        finally:
            await running.stop(0)
        pos, neg = resp.scores[0::2], resp.scores[1::2]
        return sum(a > b for a, b in zip(pos, neg)) / len(pos), resp.model.version

    accuracy, version = asyncio.run(score())
    print(f"   Reward.Score ({version}): the true caption outscores its hard negative on "
          f"{accuracy:.0%} of 32 held-out images")
    out["service_accuracy"] = accuracy
    return out


def feedback_round(settings, steps: int, out: Path, eval_examples: int = 12) -> dict:
    """Step 7: a PeFL run through the queue, then before/after samples of held-out edits."""
    from editloop.cli.train import enqueue_feedback_chain
    from editloop.models.zoo import load_pipeline
    from editloop.registry import fetch_model_dir, promoted
    from editloop.state import open_state
    from editloop.world.io import save_grid_png
    from trainers.feedback.evaluate import sample
    from trainers.feedback.examples import feedback_examples
    from trainers.feedback.run import start_model

    sessions, store = open_state(settings)
    with sessions() as s:
        weights = {k: 1.0 for k in ("aesthetic", "alignment") if promoted(s, k) is not None}
    if not weights:
        print("   no promoted aesthetic or alignment reward to learn from; skipped")
        return {}
    before_dir, before_version, _ = start_model(sessions, store, settings, None)
    # with DPOK's KL trust region at the weight measured best (BENCHMARKS.md, "Two on-policy rounds, and a KL
    # trust region": without it PeFL exploits the learned reward and the edits get worse)
    config = {"steps": steps, "batch_size": 4, "reward_weights": weights, "kl_weight": 100.0,
              "eval": {"examples": eval_examples}}
    run_id = enqueue_feedback_chain(settings, ["pefl"], config, "demo")[0]
    result = _finished(sessions, run_id, "   PeFL run")
    m = result["metrics"]
    print(f"   PeFL run {run_id[:8]} against {sorted(weights)}: {before_version} -> {result['version']}; "
          f"held-out feedback score {m['parent_eval_score']:.3f} -> {m['eval_score']:.3f}, judged success "
          f"{m['parent']['success']:.2f} -> {m['success']:.2f}; promoted: {result['promoted']} "
          f"{result.get('refused', '')}")
    examples = feedback_examples(6, 424_242)
    after_dir = fetch_model_dir(store, result["checkpoint_key"], settings.state_dir / "models")
    import numpy as np

    rows = [[np.where(e.mask[..., None] > 0, e.source // 2, e.source) for e in examples]]
    for path in (before_dir, after_dir):
        rows.append(list(sample(load_pipeline(path, "inpaint", device=settings.device), examples, 7, 20).images))
    save_grid_png(rows, out / "feedback.png", ["source (mask dimmed)", f"before: {before_version}",
                                                f"after: {result['version']}"],
                  [f"{e.task}: {e.prompt}" for e in examples], "held-out edits before and after PeFL (seed 7)")
    (out / "feedback_curves.png").write_bytes(store.get(result["curves_key"]))
    return {"run_id": run_id, "version": result["version"], "promoted": result["promoted"],
            "eval_score": m["eval_score"], "parent_eval_score": m["parent_eval_score"], "rewards": sorted(weights)}


def label_in_label_studio(settings, set_ids: list[int], keep: bool) -> dict:
    """Push, let simulated annotators label through the API, sync, and return the statistics."""
    from annotation import server
    from annotation.client import connect
    from annotation.links import LinkMaker, webhook_token
    from annotation.push import Target, push_candidate_sets
    from annotation.simulate import label_project
    from annotation.sync import sync
    from editloop.cli.annotation import simulated_labellers
    from editloop.db import make_engine, make_sessionmaker
    from editloop.labels.stats import format_stats, label_stats
    from editloop.store import open_store

    started, web_started = server.running_info(settings) is None, not server.web_running(settings)
    print("5. Label Studio" + (" (starting it; the first run installs it, a few minutes)" if started else ""))
    info = server.up(settings)
    try:
        sessions, store = make_sessionmaker(make_engine(settings.resolved_database_url())), open_store(settings)
        ls = connect(info.url, info.token)
        target = Target(2, 50, f"{settings.resolved_annotation_web_url()}/webhook", webhook_token(settings),
                        settings.annotation_project_prefix)
        pushed = push_candidate_sets(ls, sessions, store, LinkMaker(settings, store), target, set_ids)
        print(f"   pushed {pushed.created} tasks ({pushed.already} already there) to {info.url}, overlap 2")
        labellers = simulated_labellers(info.url, [0.25, 0.5, 1.0], 0, False)
        counts = sum((label_project(info.url, labellers, pid) for pid in pushed.projects.values()), start=Counter())
        print(f"   simulated annotators labelled through the API: {dict(counts)}")
        report = sync(ls, sessions)
        print(f"   synced: Label Studio holds {report.seen} annotations; {report.recorded} new found by polling "
              f"(the others arrived by webhook and were applied by the worker); applied now: "
              f"{report.applied.applied}")
        with sessions() as session:
            stats = label_stats(session)
        print("   " + format_stats(stats, {f"ls:{lab.user_id}": lab.email for lab in labellers}).replace("\n", "\n   "))
        return {"label_studio": info.url, "labels": dict(stats.status), "per_annotator": stats.per_annotator,
                "agreement_best": stats.agreement_best, "alpha_best": stats.alpha_best}
    finally:
        if web_started and not keep:
            server.stop_web(settings)
        if started and not keep:
            server.stop_label_studio(settings)


def candidate_sets(settings, scenes, args) -> list[dict]:
    """Enqueue one candidate set per scene; wait for the worker; read the images back."""
    from sqlalchemy import select

    from editloop.cli.progress import follow_task
    from editloop.db import CandidateSet, make_engine, make_sessionmaker
    from editloop.store import open_store
    from editloop.world.io import from_png
    from trainers.celery_app import make_celery

    app = make_celery(settings)
    specs = [dict(prompt=s.caption, n=args.candidates, steps=args.steps, seed=args.seed + i,
                  idempotency_key=f"demo-{args.seed}-{i}-{args.candidates}-{args.steps}") for i, s in enumerate(scenes)]
    payload = queue.GenerateCandidateSets(specs)
    result = app.send_task(payload.task, args=payload.args())  # one task, one model load
    ids = follow_task(result, "   candidate sets", len(specs))
    store = open_store(settings)
    sets = []
    with make_sessionmaker(make_engine(settings.resolved_database_url()))() as session:
        for set_id in ids:
            cs = session.scalars(select(CandidateSet).where(CandidateSet.id == set_id)).one()
            sets.append({"id": set_id, "images": [from_png(store.get(i.image.blob_key)) for i in cs.items],
                         "keys": [i.image.blob_key for i in cs.items]})
    return sets


def instruction_edits(address: str, settings: Settings, seed: int, out: Path) -> dict:
    """Editor.Edit on one held-out edit of each kind; the judge says which succeeded (edit.png)."""
    import grpc

    from editloop.world import edit_success, judge, render
    from editloop.world.io import from_png, save_grid_png, to_png
    from services.core.channels import open_channel
    from services.gen.editloop.v1 import common_pb2, editor_pb2, editor_pb2_grpc
    from trainers.align.evaluate import held_out_edits

    edits = held_out_edits(1, seed=880_000 + seed)
    rows, results = [[render(e.source) for e in edits]], []
    with open_channel(address, settings) as ch:
        stub = editor_pb2_grpc.EditorStub(ch)
        try:
            resps = [stub.Edit(editor_pb2.EditRequest(
                image=common_pb2.Image(png=to_png(src)), instruction=e.instruction, record=True,
                params=common_pb2.SamplingParams(seed=seed)), timeout=600) for src, e in zip(rows[0], edits)]
        except grpc.RpcError as exc:
            print(f"4b. Editor.Edit: {exc.code().name}: {exc.details()}")
            return {"error": exc.details()}
    rows.append([from_png(r.images[0].png) for r in resps])
    for e, image in zip(edits, rows[1]):
        results.append({"instruction": e.instruction, "kind": e.kind, "success": edit_success(judge(image), e)})
    save_grid_png(rows, out / "edit.png", ["source", "edited"], [f"{e.kind}: {e.instruction}" for e in edits],
                  f"instruction edits by {resps[0].model.name} {resps[0].model.version}")
    model = f"{resps[0].model.name} {resps[0].model.version}"
    print(f"4b. Editor.Edit ({model}): {sum(r['success'] for r in results)}/{len(results)} instruction edits judged "
          f"right: " + "; ".join(f"{r['instruction']!r} {'ok' if r['success'] else 'missed'}" for r in results))
    return {"model": model, "edits": results}


def run_demo(args: argparse.Namespace) -> int:
    import time

    from editloop.cli.stack import running_stack
    from editloop.settings import Settings
    from editloop.world import cell_mask, compare, edit_success, judge, make_edit, panel, render, sample_scene
    from editloop.world.io import from_png, mask_to_png, save_grid_png, to_png
    from services.core.channels import open_channel
    from services.gen.editloop.v1 import (
        common_pb2,
        editor_pb2,
        editor_pb2_grpc,
        generator_pb2,
        generator_pb2_grpc,
    )

    t0 = time.monotonic()
    sizes = resolve_profile(args)
    settings = Settings()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np

    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng) for _ in range(args.prompts)]
    summary: dict = {"state_dir": str(settings.state_dir.resolve())}
    print(f"1. starting the embedded stack (state in {settings.state_dir}, logs in {settings.state_dir / 'stack.log'})")
    # the tour drives each step itself: the automatic loop (a promoted reward starts a round) stays off here
    with running_stack(settings, base_port=0, echo=False, env_extra={"EDITLOOP_LOOP_ENABLED": "false"}) as addresses:
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
        save_grid_png([list(r) for r in zip(*rows)], out / "candidates.png",
                      ["caption's render", *[f"candidate {k}" for k in range(len(rows[0]) - 1)]],
                      [f"set {cs['id']}: {scene.caption}" for scene, cs in zip(scenes, sets)],
                      "candidate sets (one per column) from the generator")
        # 4. the services, as a gRPC client sees them
        with open_channel(addresses["generator"], settings) as ch:
            resp = generator_pb2_grpc.GeneratorStub(ch).Generate(generator_pb2.GenerateRequest(
                prompt=scenes[0].caption, num_images=2, record=True,
                params=common_pb2.SamplingParams(steps=args.steps, seed=args.seed)))
        summary["generate"] = {"model": f"{resp.model.name} {resp.model.version}", "generation_id": resp.generation_id}
        print(f"3. Generator.Generate: 2 images by {resp.model.name} {resp.model.version}, "
              f"recorded as generation {resp.generation_id}")
        erase_rows, erase_captions, successes = [], [], []
        with open_channel(addresses["editor"], settings) as ch:
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
                erase_captions.append(f"erase the {edit.removed.color} {edit.removed.shape}")
        save_grid_png([list(r) for r in zip(*erase_rows)], out / "erase.png",
                      ["source", "object to erase (dimmed)", "Editor.Erase"], erase_captions,
                      "erase: remove the dimmed object")
        summary["erase_success"] = successes
        print(f"4. Editor.Erase: {sum(successes)}/{len(successes)} objects judged gone")
        summary["instruction_edits"] = instruction_edits(addresses["editor"], settings, args.seed, out)
        if not args.no_label_studio:  # inside the stack: its worker applies what the webhooks record
            summary["annotation"] = label_in_label_studio(settings, [cs["id"] for cs in sets],
                                                          args.keep_label_studio)
        if args.reward_steps:
            print("6. reward models: training runs on the queue, gated promotion, a reward service")
            summary["rewards"] = train_rewards(settings, args.reward_steps, sizes)
        if args.feedback_steps:
            print("7. feedback learning: one PeFL round on the queue, gated against the model it started from")
            summary["feedback"] = feedback_round(settings, args.feedback_steps, out, sizes["feedback_eval"])
    summary["profile"], summary["seconds"] = ("full" if args.full else "quick"), round(time.monotonic() - t0)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"results: {out / 'candidates.png'} (column 1: the caption as the world renders it), "
          f"{out / 'erase.png'} (source, mask, result), {out / 'edit.png'} (source, instruction edit), "
          f"{out / 'feedback.png'} (source with the mask darkened, "
          f"before, after feedback learning), {out / 'summary.json'}; "
          f"images and rows in {settings.state_dir}")
    return 0
