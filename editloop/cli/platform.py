"""`editloop serve|up|db|models`: run the platform's processes and look at its state."""

from __future__ import annotations

import argparse
from pathlib import Path

from editloop.settings import Settings


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one gRPC service in this process")
    p.add_argument("kind", choices=["generator", "editor", "reward"])
    p.add_argument("--kind", dest="reward_kind", choices=["aesthetic", "alignment", "coherence"], default=None,
                   help="which reward model (serve reward only)")
    p.add_argument("--model", type=Path, default=None, help="diffusers directory (default: the base model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (printed as READY kind host:port)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    p.set_defaults(func=_serve)

    p = sub.add_parser("up", help="start the embedded stack (services + worker) until Ctrl-C")
    p.set_defaults(func=lambda a: __import__("editloop.cli.stack", fromlist=["run_up"]).run_up(Settings()))

    p = sub.add_parser("db", help="database administration")
    dsub = p.add_subparsers(dest="db_command", required=True)
    d = dsub.add_parser("upgrade", help="migrate the database to the newest schema")
    d.set_defaults(func=_db_upgrade)

    p = sub.add_parser("models", help="the model registry")
    msub = p.add_subparsers(dest="models_command", required=True)
    m = msub.add_parser("list", help="every registered model version")
    m.set_defaults(func=_models_list)
    m = msub.add_parser("init-reward", help="write an UNTRAINED tiny reward model (for tests and benchmarks)")
    m.add_argument("--kind", required=True, choices=["aesthetic", "alignment", "coherence"])
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_init_reward)


def _serve(args: argparse.Namespace) -> int:
    from services.app import run_service

    if args.kind == "reward" and not args.reward_kind:
        raise ValueError("`--kind` is required with `serve reward` (aesthetic, alignment or coherence)")
    run_service(args.kind, Settings(), args.model, args.port, args.host, args.metrics_port, args.grace,
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

    from editloop.db import ModelVersion, make_engine, make_sessionmaker, upgrade

    url = Settings().resolved_database_url()
    upgrade(url)
    with make_sessionmaker(make_engine(url))() as s:
        rows = s.scalars(select(ModelVersion).order_by(ModelVersion.kind, ModelVersion.created_at)).all()
        if not rows:
            print("no model versions registered yet (services register the model they serve at start)")
        for r in rows:
            print(f"{r.kind:10} {r.name:16} {r.version:16} {r.status:10} {r.checkpoint_key or ''}")
    return 0
