"""`editloop serve|up|db|models`: run the platform's processes and look at its state."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from editloop.models.reward_kinds import kind_names
from editloop.settings import Settings


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one gRPC service in this process")
    p.add_argument("kind", choices=["generator", "editor", "reward"])
    p.add_argument("--kind", dest="reward_kind", choices=kind_names(), default=None,
                   help="which reward model (serve reward only)")
    p.add_argument("--model", type=Path, default=None, help="diffusers directory (default: the base model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (printed as READY kind host:port)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    p.add_argument("--insecure-public", action="store_true",
                   help="listen on a non-loopback --host without EDITLOOP_AUTH=required (refused otherwise)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("up", help="run the whole platform (services, workers, beat, annotation endpoint, Label "
                                  "Studio) as supervised child processes until Ctrl-C")
    p.add_argument("--port", type=int, default=None,
                   help="0 = every part on any free port; N = parts on N, N+1, ... (default: each part's setting, "
                        "EDITLOOP_GENERATOR_PORT=50051, EDITLOOP_EDITOR_PORT=50052, EDITLOOP_AESTHETIC_PORT=50053, "
                        "EDITLOOP_ALIGNMENT_PORT=50054, EDITLOOP_COHERENCE_PORT=50055, "
                        "EDITLOOP_ANNOTATION_WEB_PORT=8090, EDITLOOP_LABEL_STUDIO_PORT=8080)")
    p.add_argument("--part-port", action="append", default=[], metavar="PART=PORT",
                   help="one part's port, e.g. editor=6000 (repeatable; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="first Prometheus port of the services (the next ones follow); 0 = any free ports "
                        "(default EDITLOOP_METRICS_PORT=0)")
    p.add_argument("--host", default="127.0.0.1", help="address the services listen on")
    p.add_argument("--insecure-public", action="store_true",
                   help="listen on a non-loopback --host without EDITLOOP_AUTH=required (refused otherwise)")
    p.add_argument("--no-label-studio", action="store_true", help="run without Label Studio")
    p.add_argument("--only", default="", help="comma-separated parts to run (default: all)")
    p.add_argument("--timeout", type=float, default=900, help="seconds for every part to become ready")
    p.set_defaults(func=_up)

    p = sub.add_parser("db", help="database administration")
    dsub = p.add_subparsers(dest="db_command", required=True)
    d = dsub.add_parser("upgrade", help="migrate the database to the newest schema")
    d.set_defaults(func=_db_upgrade)

    p = sub.add_parser("models", help="the model registry")
    msub = p.add_subparsers(dest="models_command", required=True)
    m = msub.add_parser("list", help="every registered model version")
    m.set_defaults(func=_models_list)
    m = msub.add_parser("show", help="the versions of one kind with status, metrics and lineage")
    m.add_argument("kind")
    m.set_defaults(func=_models_show)
    m = msub.add_parser("promote", help="promote a candidate version (gated: held-out score vs the promoted one)")
    m.add_argument("kind")
    m.add_argument("version")
    m.add_argument("--tolerance", type=float, default=0.01)
    m.add_argument("--force", action="store_true", help="skip the score gate (the checkpoint must still load)")
    m.set_defaults(func=_models_promote)
    m = msub.add_parser("review", help="conclude a side-by-side review by people: count the verdicts synced from "
                                       "Label Studio and promote the version if the reviewers prefer it")
    m.add_argument("kind")
    m.add_argument("version")
    m.add_argument("--min-verdicts", type=int, default=None, help="verdicts needed (default: one per review pair)")
    m.add_argument("--alpha", type=float, default=None,
                   help="level of the sign test on pairs won against pairs lost (default: 0.05)")
    m.set_defaults(func=_models_review)
    m = msub.add_parser("rollback", help="re-promote the version promoted before the current one")
    m.add_argument("kind")
    m.set_defaults(func=_models_rollback)
    m = msub.add_parser("init-reward", help="write an UNTRAINED tiny reward model (for tests and benchmarks)")
    m.add_argument("--kind", required=True, choices=kind_names())
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_init_reward)
    m = msub.add_parser("init-sd15", help="write an UNTRAINED model of Stable Diffusion 1.5's architecture (random "
                                          "weights, diffusers format) to run the full-size code paths")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--t2i", action="store_true", help="a text-to-image UNet (4 input channels) instead of inpainting")
    m.set_defaults(func=_init_sd15)


def _init_sd15(args: argparse.Namespace) -> int:
    from editloop.models.sd15 import init_sd15

    out = init_sd15(args.out, args.seed, inpainting=not args.t2i)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote an untrained SD 1.5-architecture {'text-to-image' if args.t2i else 'inpainting'} model to {out} "
          f"({size / 2**30:.1f} GiB)")
    return 0


def _up(args: argparse.Namespace) -> int:
    from editloop.cli.stack import ALL_PARTS, StackError, run_up
    from services.core.server import check_exposure

    settings = Settings()
    if args.insecure_public:
        settings = settings.model_copy(update={"insecure_public": True})
        os.environ["EDITLOOP_INSECURE_PUBLIC"] = "true"  # the children read it
    check_exposure(args.host, settings.auth, settings.tls_cert is not None, settings.insecure_public)
    parts = tuple(x.strip() for x in args.only.split(",") if x.strip()) or ALL_PARTS
    unknown = [x for x in parts if x not in ALL_PARTS]
    if unknown:
        raise ValueError(f"`--only` names unknown parts {unknown}; parts are {', '.join(ALL_PARTS)}")
    if args.no_label_studio:
        parts = tuple(x for x in parts if x != "label-studio")
    overrides = {}
    for item in args.part_port:
        name, _, port = item.partition("=")
        if name not in ALL_PARTS or not port.isdigit():
            raise ValueError(f"`--part-port` must be PART=PORT with PART one of {', '.join(ALL_PARTS)}, got {item!r}")
        overrides[name] = int(port)
    if "label-studio" in parts and not _label_studio_installed(settings):
        parts = tuple(x for x in parts if x != "label-studio")
    try:
        return run_up(settings, parts, args.port, overrides, args.metrics_port, args.timeout, args.host)
    except StackError as exc:
        raise ValueError(str(exc)) from None


def _label_studio_installed(settings: Settings) -> bool:
    """Install Label Studio into its own virtualenv when missing; False (the stack runs without it) if that fails."""
    from annotation.server import LabelStudioError, ensure_installed

    try:
        ensure_installed(settings.label_studio_venv.resolve())
    except (LabelStudioError, OSError) as exc:
        print(f"Label Studio is not installed and could not be ({exc}); the platform runs without it")
        return False
    return True


def _serve(args: argparse.Namespace) -> int:
    from services.app import run_service

    if args.kind == "reward" and not args.reward_kind:
        raise ValueError("`--kind` is required with `serve reward` (aesthetic, alignment or coherence)")
    settings = Settings()
    if args.insecure_public:
        settings = settings.model_copy(update={"insecure_public": True})
    run_service(args.kind, settings, args.model, args.port, args.host, args.metrics_port, args.grace,
                args.reward_kind, max_batch=args.max_batch, max_delay=args.max_delay_ms / 1000,
                max_queue=args.max_queue)
    return 0


def _init_reward(args: argparse.Namespace) -> int:
    from editloop.models.reward import save_reward, tiny_reward

    save_reward(tiny_reward(args.kind, args.seed), args.kind, args.out, extra={"trained": False})
    print(f"wrote an untrained {args.kind} reward model to {args.out}")
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from editloop.db.session import upgrade

    url = Settings().resolved_database_url()
    upgrade(url)
    print(f"database at head: {url.split('@')[-1]}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from editloop.db import ModelVersion
    from editloop.state import open_sessions

    with open_sessions(Settings())() as s:
        rows = s.scalars(select(ModelVersion).order_by(ModelVersion.kind, ModelVersion.created_at)).all()
        if not rows:
            print("no model versions registered yet (services register the model they serve at start)")
        for r in rows:
            print(f"{r.kind:10} {r.name:16} {r.version:16} {r.status:10} {r.checkpoint_key or ''}")
    return 0


def registry_context():
    from editloop.state import open_state

    settings = Settings()
    return settings, *open_state(settings)


def _load_check(settings: Settings, store, kind: str):
    from editloop.registry import load_check

    return load_check(kind, store, settings.state_dir / "models")


def _models_show(args: argparse.Namespace) -> int:
    import json

    from sqlalchemy import select

    from editloop.db import ModelVersion

    _, sessions, _ = registry_context()
    with sessions() as s:
        rows = s.scalars(select(ModelVersion).where(ModelVersion.kind == args.kind).order_by(ModelVersion.id)).all()
        if not rows:
            print(f"no {args.kind} versions registered")
        for r in rows:
            metrics = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.metrics.items()}
            print(f"{r.version:24} {r.status:9} parent={r.parent_id or '-'} metrics={json.dumps(metrics)}")
            if r.config.get("lineage"):
                print(f"{'':24} lineage={json.dumps(r.config['lineage'])}")
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    from editloop.registry import promote

    settings, sessions, store = registry_context()
    with sessions.begin() as s:
        row = promote(s, args.kind, args.version, _load_check(settings, store, args.kind), args.tolerance,
                      args.force, floor_alpha=settings.promotion_floor_alpha)
        print(f"promoted {row.kind} {row.version}")
    return 0


def _models_review(args: argparse.Namespace) -> int:
    from editloop.labels.review import REVIEW_ALPHA, record_review, review_verdicts
    from editloop.registry import DEFAULT_TOLERANCE, PromotionRefused, find_version, promote

    settings, sessions, store = registry_context()
    with sessions.begin() as s:
        row = find_version(s, args.kind, args.version)
        review, pairs = review_verdicts(s, row.version)
        if pairs == 0:
            raise ValueError(f"{args.kind} {args.version} has no review pairs (train it with `--review people`)")
        if args.min_verdicts is not None and args.min_verdicts < 1:
            raise ValueError(f"`--min-verdicts` must be >= 1, got {args.min_verdicts}")
        alpha = REVIEW_ALPHA if args.alpha is None else args.alpha
        if not 0 < alpha < 1:
            raise ValueError(f"`--alpha` must be in (0, 1), got {alpha}")
        waiting = record_review(row, review, pairs, args.min_verdicts or pairs, alpha)
        faster = row.metrics.get("review_margin") is not None  # "as good, faster": the reward may dip a little
        gsb, by_pair = review.verdicts, review.pairs
        print(f"{args.kind} {args.version}: good / same / bad {gsb.good} / {gsb.same} / {gsb.bad} on {pairs} pairs "
              f"(pairs won / tied / lost by majority {by_pair.good} / {by_pair.same} / {by_pair.bad})")
        if waiting:
            print(f"not decided: {waiting}")
            return 1
    try:
        with sessions.begin() as s:
            promote(s, args.kind, args.version, _load_check(settings, store, args.kind),
                    tolerance=DEFAULT_TOLERANCE if faster else 0.0, floor_alpha=settings.promotion_floor_alpha)
    except PromotionRefused as exc:
        print(exc)
        return 1
    print(f"promoted {args.kind} {args.version}")
    return 0


def _models_rollback(args: argparse.Namespace) -> int:
    from editloop.registry import rollback

    settings, sessions, store = registry_context()
    with sessions.begin() as s:
        row = rollback(s, args.kind, _load_check(settings, store, args.kind))
        print(f"rolled back: {row.kind} {row.version} is promoted again")
    return 0
