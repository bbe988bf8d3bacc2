"""`editloop annotation up|down|candidates|push|label|sync|stats`: best/worst labelling in a real Label Studio."""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

from editloop.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotation", help="Label Studio: start it, push candidate sets, sync labels, statistics")
    asub = p.add_subparsers(dest="annotation_command", required=True)
    up = asub.add_parser("up", help="install (once) and start Label Studio on loopback, plus the image/webhook "
                                    "endpoint")
    up.add_argument("--port", type=int, default=None, help="Label Studio's port (default EDITLOOP_LABEL_STUDIO_PORT)")
    up.set_defaults(func=_up)
    asub.add_parser("down", help="stop Label Studio and the endpoint").set_defaults(func=_down)
    cand = asub.add_parser("candidates", help="edit candidate sets (inpaint, erase, outpaint on world examples) "
                                              "made by an editor version, for labelling: the fine-tuned model's "
                                              "own samples (needs a worker on the gpu queue, e.g. `editloop up`)")
    cand.add_argument("--editor", default="served",
                      help="served (the promoted editor, else the base; default), base, or an editor version "
                           "(`editloop models show editor`), a refused candidate included")
    cand.add_argument("--sets", type=int, default=16, help="candidate sets, one world example each (default 16)")
    cand.add_argument("--images", type=int, default=4, help="images per set (2..16, default 4)")
    cand.add_argument("--seed", type=int, default=None, help="first example seed (default 500000: no held-out set)")
    cand.add_argument("--tasks", default="inpaint,erase,outpaint", help="comma-separated edit tasks")
    cand.add_argument("--steps", type=int, default=None, help="sampling steps (default: the editor's own)")
    cand.add_argument("--guidance", type=float, default=None,
                      help="text guidance (default 4.0; with --instruct the instruction editors' 5.0)")
    cand.add_argument("--guidances", default="",
                      help="each image at its own text guidance, cycled over the set (e.g. 1,2.5,4,7; overrides "
                           "--guidance): sets that differ teach the reward more than near-twins")
    cand.add_argument("--instruct", action="store_true",
                      help="instruction-edit sets (the seven world edit kinds) made by an instruction editor: "
                           "--editor then names an instruct version (served: the promoted one, else the committed)")
    cand.add_argument("--no-wait", action="store_true", help="enqueue and return (the sets appear as the worker "
                                                             "makes them)")
    cand.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each set (default 1800)")
    cand.set_defaults(func=_candidates)
    gold = asub.add_parser("gold", help="gold sets: edit sets with a known best/worst answer (the world's judge), "
                                        "pushed among the others; `stats` shows each annotator's accuracy on them")
    gold.add_argument("--sets", type=int, default=8, help="gold sets to make (default 8)")
    gold.add_argument("--images", type=int, default=4, help="images per set (2..16, default 4)")
    gold.add_argument("--seed", type=int, default=None, help="first scene seed (default 3000000)")
    gold.add_argument("--reversed", action="store_true", help="the answer under the reversed taste")
    gold.set_defaults(func=_gold)
    push = asub.add_parser("push", help="candidate sets (and comparison pairs) become Label Studio tasks; "
                                        "idempotent")
    push.add_argument("--overlap", type=int, default=2, help="annotators per task (default 2)")
    push.add_argument("--batch-size", type=int, default=50)
    push.add_argument("--ids", type=int, nargs="*", default=None, help="only these candidate sets")
    push.add_argument("--no-pairs", action="store_true", help="skip side-by-side comparison pairs")
    push.set_defaults(func=_push)
    label = asub.add_parser("label", help="simulated annotators label every pushed task through the API")
    label.add_argument("--temperatures", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                       help="one simulated annotator per temperature (noise of its answers)")
    label.add_argument("--seed", type=int, default=0)
    label.add_argument("--reversed", action="store_true", help="annotators with the reversed utility weights")
    label.set_defaults(func=_label)
    sync = asub.add_parser("sync", help="reconcile with Label Studio and apply pending label events")
    sync.add_argument("--watch", type=float, default=0, help="repeat every SECONDS until interrupted")
    sync.set_defaults(func=_sync)
    asub.add_parser("stats", help="labels per annotator and day, agreement, GSB").set_defaults(func=_stats)


def _friendly(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Label Studio down, unreachable or refusing: one clear line on stderr and exit code 1, no traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        import requests

        from annotation.client import LabelStudioUnavailable
        from annotation.server import LabelStudioError
        from editloop.cli.world import fail

        try:
            return func(args)
        except (LabelStudioError, LabelStudioUnavailable, requests.ConnectionError) as exc:
            fail(f"Label Studio: {exc}")
            return 1

    return run


def _settings() -> Settings:
    """The settings, with the running stack's annotation endpoint and Label Studio ports when one runs."""
    from editloop.cli.stack import stack_settings

    return stack_settings(Settings())


def _context(settings: Settings):
    from editloop.state import open_state

    return open_state(settings)


@_friendly
def _up(args: argparse.Namespace) -> int:
    from annotation import server

    settings = _settings()
    info = server.up(settings, args.port)
    print(f"Label Studio is up at {info.url} (admin {info.admin_email}, password in "
          f"{info.data_dir}/editloop-admin-password); image/webhook endpoint at "
          f"{settings.resolved_annotation_web_url()}; API token (personal access token) in "
          f"{server.info_path(settings)}")
    return 0


@_friendly
def _down(args: argparse.Namespace) -> int:
    from annotation import server

    print("stopped" if server.down(_settings()) else "nothing was running")
    return 0


def _candidates(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from editloop.guidances import parse_guidances
    from trainers.edit_sets import LABEL_SEED, EditSetsRequest, make_edit_sets, wait_for_sets

    request = EditSetsRequest(editor=args.editor, sets=args.sets, images=args.images,
                              seed=LABEL_SEED if args.seed is None else args.seed,
                              tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()), steps=args.steps,
                              guidance=args.guidance, guidances=parse_guidances(args.guidances, "--guidances"),
                              instruct=args.instruct)
    editor, results = make_edit_sets(_settings(), request)
    total = sum(count for _, count in results)
    print(f"{total} candidate sets enqueued on the gpu queue in {len(results)} tasks, made by editor {editor!r}")
    if args.no_wait:
        return 0
    with tqdm(total=total, desc=f"candidate sets by {editor}", unit="set") as bar:
        ids = wait_for_sets(results, args.timeout, bar.update)
    print(f"candidate sets {ids[0]}..{ids[-1]} ready; label them with `editloop annotation push --ids "
          f"{' '.join(map(str, ids))}`" if len(ids) <= 20 else
          f"candidate sets {ids[0]}..{ids[-1]} ready ({len(ids)}); label them with `editloop annotation push`")
    return 0


def _gold(args: argparse.Namespace) -> int:
    from editloop.labels.gold import GOLD_SEED, make_gold_sets
    from editloop.world.annotators import reversed_weights

    sessions, store = _context(_settings())
    with sessions.begin() as session:
        ids = make_gold_sets(session, store, args.sets, args.images, GOLD_SEED if args.seed is None else args.seed,
                             reversed_weights() if args.reversed else None)
    print(f"gold sets {ids[0]}..{ids[-1]} made ({len(ids)}, answers recorded); push them with "
          f"`editloop annotation push`")
    return 0


@_friendly
def _push(args: argparse.Namespace) -> int:
    from annotation.client import connect_from_state
    from annotation.links import LinkMaker, webhook_token
    from annotation.push import Target, push_pairs, push_to_label_studio

    settings = _settings()
    sessions, store = _context(settings)
    report = push_to_label_studio(settings, sessions, store, args.ids, args.overlap, args.batch_size)
    print(f"best/worst: {report.created} tasks created, {report.adopted} adopted, {report.already} already there; "
          f"projects {report.projects}")
    if not args.no_pairs:
        ls, _ = connect_from_state(settings)
        target = Target(args.overlap, args.batch_size, f"{settings.resolved_annotation_web_url()}/webhook",
                        webhook_token(settings), settings.annotation_project_prefix)
        pairs = push_pairs(ls, sessions, store, LinkMaker(settings, store), target)
        print(f"side by side: {pairs.created} created, {pairs.adopted} adopted, {pairs.already} already there")
    return 0


def simulated_labellers(url: str, temperatures: list[float], seed: int, reverse: bool) -> list:
    from annotation.simulate import join
    from editloop.world.annotators import panel, reversed_weights

    weights = reversed_weights() if reverse else None
    return [join(url, a) for a in panel(tuple(temperatures), weights, seed)]


@_friendly
def _label(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select
    from tqdm import tqdm

    from annotation.client import connect_from_state
    from annotation.simulate import label_project
    from editloop.db.models import LabelTask

    settings = _settings()
    sessions, _ = _context(settings)
    _, info = connect_from_state(settings)
    labellers = simulated_labellers(info.url, args.temperatures, args.seed, args.reversed)
    with sessions() as session:
        projects = session.execute(select(LabelTask.ls_project_id, func.count()).group_by(LabelTask.ls_project_id))
        projects = list(projects)
    for project_id, n_tasks in projects:
        with tqdm(desc=f"labelling project {project_id}", unit="label") as bar:
            counts = label_project(info.url, labellers, project_id, progress=bar.update)
        print(f"project {project_id} ({n_tasks} tasks): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


@_friendly
def _sync(args: argparse.Namespace) -> int:
    from annotation.client import connect_from_state
    from annotation.sync import sync

    settings = _settings()
    sessions, _ = _context(settings)
    ls, _ = connect_from_state(settings)
    while True:
        report = sync(ls, sessions)
        print(f"Label Studio holds {report.seen} annotations; {report.recorded} new events found by polling (the "
              f"others had arrived by webhook); applied {report.applied.applied} now "
              f"({dict(report.applied.outcomes)})"
              + (f"; {len(report.malformed)} malformed: {report.malformed[:3]}" if report.malformed else ""))
        if not args.watch:
            return 0
        time.sleep(args.watch)


@_friendly
def _stats(args: argparse.Namespace) -> int:
    from editloop.labels.stats import format_stats, label_stats

    settings = _settings()
    sessions, _ = _context(settings)
    names = {}
    try:
        from annotation.client import connect_from_state

        ls, _ = connect_from_state(settings)
        names = {f"ls:{u.id}": u.email for u in ls.users.list()}
    except Exception:  # names are a nicety; ids are printed when Label Studio is down
        pass
    with sessions() as session:
        print(format_stats(label_stats(session), names))
    return 0
