"""`editloop auth create-token|list|revoke`: client tokens for the gRPC services (EDITLOOP_AUTH=required)."""

from __future__ import annotations

import argparse

from editloop.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("auth", help="client tokens for the services (only their hashes are stored)")
    asub = p.add_subparsers(dest="auth_command", required=True)
    a = asub.add_parser("create-token", help="make a token and print it once")
    a.add_argument("name", help="who or what uses it (unique), e.g. ci-client")
    a.add_argument("--scopes", required=True, help="comma-separated: generate, edit, score, admin")
    a.set_defaults(func=_create)
    a = asub.add_parser("list", help="every token's name, scopes and state (never the token)")
    a.set_defaults(func=_list)
    a = asub.add_parser("revoke", help="stop a token (the services see it within EDITLOOP_AUTH_CACHE_S)")
    a.add_argument("name")
    a.set_defaults(func=_revoke)


def _sessions():
    from editloop.state import open_sessions

    return open_sessions(Settings())


def _create(args: argparse.Namespace) -> int:
    from editloop.auth import create_token, parse_scopes

    scopes = parse_scopes(args.scopes)  # refused before the database is touched
    with _sessions().begin() as s:
        token = create_token(s, args.name, scopes)
    print(f"token {args.name!r} (scopes {','.join(scopes)}); shown once, only its hash is kept:")
    print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    from editloop.auth import list_tokens

    with _sessions()() as s:
        rows = list_tokens(s)
        if not rows:
            print("no tokens (`editloop auth create-token NAME --scopes ...` makes one)")
        for r in rows:
            state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "live"
            print(f"{r.name:24s} {r.scopes:28s} created {r.created_at:%Y-%m-%d %H:%M}  {state}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from editloop.auth import revoke_token

    with _sessions().begin() as s:
        row = revoke_token(s, args.name)
        print(f"token {row.name!r} revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
    return 0
