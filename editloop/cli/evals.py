"""`editloop eval`: how good is a version? Measured on a named held-out suite, stored with the version (the
`evaluations` table and <state_dir>/evals/*.json), compared with another version edit by edit.

    editloop eval editor [VERSION|promoted|base] [--suite world|FOLDER] [--n N] [--clip DIR]
    editloop eval instruct [VERSION|promoted|base] [--suite world|FOLDER] [--n N] [--clip DIR]
    editloop eval reward VERSION|KIND
    editloop eval reward-drift VERSION|KIND [--editor VERSION|promoted|base] [--taste default|reversed]
    editloop eval compare A B [--suite SUITE] [--instruct]
    editloop report VERSION|RUN [--out DIR] [--evaluate]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VERSION_HELP = "a version in the registry, `promoted` (the served one) or `base` (the committed base model)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a version on a held-out suite (stored with it), or compare two")
    esub = p.add_subparsers(dest="eval_command", required=True)
    for which, what in (("editor", "the inpainting editor"), ("instruct", "the instruction editor")):
        e = esub.add_parser(which, help=f"{what}: judged success and preservation (world suites), L1 / PSNR / SSIM "
                                        "outside the edit region, the promoted rewards' scores, CLIP with --clip")
        e.add_argument("version", nargs="?", default="promoted", help=VERSION_HELP)
        e.add_argument("--suite", default="world", help="`world` (the world's held-out set) or a folder: "
                                                        "manifest.jsonl or MagicBrush's edit_sessions.json layout")
        e.add_argument("--n", type=int, default=None, help="items (world editor suite: 48; instruct: per edit kind, "
                                                           "4; a folder: all)")
        e.add_argument("--clip", type=Path, default=None, help="CLIP weights (transformers format) for CLIP-I / "
                                                                "CLIP-T / CLIP-direction")
        e.add_argument("--json", action="store_true", help="print the stored record as JSON")
        e.set_defaults(func=_editor, which=which)
    r = esub.add_parser("reward", help="a reward version (or KIND: the promoted one) on its kind's held-out data")
    r.add_argument("version")
    r.add_argument("--n", type=int, default=None, help="held-out examples (alignment 400, coherence 32)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_reward)
    d = esub.add_parser("reward-drift", help="a preference reward's accuracy on an editor's own samples, next to "
                                             "the base editor's (is feedback learning exploiting it?)")
    d.add_argument("version", help="a preference reward version, or aesthetic / alignment for the promoted one")
    d.add_argument("--editor", default="promoted", help=VERSION_HELP)
    d.add_argument("--taste", default="default", help="the world annotators' taste the pairs are judged by")
    d.add_argument("--n", type=int, default=None, help="world examples (48)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_drift)
    c = esub.add_parser("compare", help="two versions' stored evaluations on one suite, edit by edit (gained, "
                                        "lost, exact McNemar p)")
    c.add_argument("a", help=f"the reference side: {VERSION_HELP}")
    c.add_argument("b", help="the side compared with it")
    c.add_argument("--suite", default=None, help="the suite both were evaluated on (default: A's newest)")
    c.add_argument("--instruct", action="store_true", help="`base` and `promoted` name instruction editors")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_compare)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one static HTML page for a version or a run: the gate and its numbers, "
                                      "training curves, before/after samples, GSB, lineage")
    p.add_argument("name", help="a version in the registry, or a training run id (or a unique prefix, 6+ chars)")
    p.add_argument("--out", type=Path, default=None, help="folder for index.html and its images "
                                                          "(default <state_dir>/reports/NAME)")
    p.add_argument("--evaluate", action="store_true", help="first evaluate the version (and an editor's parent) on "
                                                           "the world suite where nothing is stored yet")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from trainers.evaluation.report import make_report

    settings, sessions, store = _state()
    if args.evaluate:
        _evaluate_for_report(settings, sessions, store, args.name)
    path = make_report(sessions, store, settings, args.name, args.out)
    print(f"report: {path.resolve()} (open it in a browser; no server needed)")
    return 0


def _evaluate_for_report(settings, sessions, store, name: str) -> None:
    """Evaluate version `name` (and an editor's parent, or the base it started from) where nothing is stored."""
    from editloop.db.models import ModelVersion
    from trainers.evaluation.records import latest
    from trainers.evaluation.run import evaluate_editor, evaluate_reward, resolve_editor, resolve_instruct

    with sessions() as s:
        row = s.query(ModelVersion).filter_by(version=name).first()
        if row is None:
            return
        kind, version = row.kind, row.version
        pairs = [(version, version)]  # (what to evaluate, the version name it is stored under)
        if kind in ("editor", "instruct"):
            parent = s.get(ModelVersion, row.parent_id).version if row.parent_id else "base"
            resolve = resolve_editor if kind == "editor" else resolve_instruct
            pairs.append((parent, resolve(s, store, settings, parent).version))
        todo = [spec for spec, stored in pairs if latest(s, stored) is None]
    for v in todo:
        print(f"evaluating {kind} {v}" + (" on the world suite" if kind in ("editor", "instruct") else ""))
        if kind in ("editor", "instruct"):
            evaluate_editor(sessions, store, settings, kind, v)
        else:
            evaluate_reward(sessions, store, settings, v)


def _state():
    from editloop.cli.platform import registry_context

    return registry_context()


def _print_record(record: dict, path: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=1))
        return
    m = record["metrics"]
    print(f"{record['subject']} {record['version']} ({record['model_kind']}) on {record['suite']}: evaluation "
          f"{record['id']}, stored in the database and {path}")
    flat = {k: v for k, v in m.items() if not isinstance(v, dict | list)}
    print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in flat.items()))
    for task, row in (m.get("per_task") or {}).items():
        print(f"  {task}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in row.items()))


def _editor(args: argparse.Namespace) -> int:
    from trainers.evaluation.run import evaluate_editor

    settings, sessions, store = _state()
    record, path = evaluate_editor(sessions, store, settings, args.which, args.version, args.suite, args.n, args.clip)
    _print_record(record, path, args.json)
    return 0


def _reward(args: argparse.Namespace) -> int:
    from trainers.evaluation.run import evaluate_reward

    settings, sessions, store = _state()
    record, path = evaluate_reward(sessions, store, settings, args.version, args.n)
    _print_record(record, path, args.json)
    return 0


def _drift(args: argparse.Namespace) -> int:
    from trainers.evaluation.run import reward_drift

    settings, sessions, store = _state()
    record, path = reward_drift(sessions, store, settings, args.version, args.editor, args.n, args.taste)
    _print_record(record, path, args.json)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from trainers.evaluation.run import compare_versions

    settings, sessions, store = _state()
    out = compare_versions(sessions, store, settings, args.a, args.b, args.suite,
                           "instruct" if args.instruct else "editor")
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"A = {out['a']['version']} (evaluation {out['a']['evaluation']}), B = {out['b']['version']} (evaluation "
          f"{out['b']['evaluation']}), {out['subject']} on {out['suite']}, {out['n']} items")
    if out["verdicts"]:
        print("| verdict | A | B | gained (B only) | lost (A only) | McNemar p |\n" + "| --- " * 6 + "|")
        for m, r in out["verdicts"].items():
            print(f"| {m} | {r['a']}/{r['n']} | {r['b']}/{r['n']} | {r['gained']} | {r['lost']} | {r['p']:.3g} |")
    print("| metric | A | B | B - A | share B higher |\n| --- | --- | --- | --- | --- |")
    for m, r in out["metrics"].items():
        print(f"| {m} | {r['a']:.4g} | {r['b']:.4g} | {r['diff']:+.4g} | {r['b_higher']:.2f} |")
    return 0
