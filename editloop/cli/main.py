"""Entry point of the `editloop` console script."""

from __future__ import annotations

import argparse
import sys

from editloop.cli import annotation, auth, client, demo, evals, loop, platform, status, train, world


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    world.add_parser(sub)
    demo.add_parser(sub)
    platform.add_parsers(sub)
    client.add_parsers(sub)
    status.add_parser(sub)
    annotation.add_parser(sub)
    train.add_parser(sub)
    loop.add_parser(sub)
    auth.add_parser(sub)
    evals.add_parser(sub)
    evals.add_report_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import grpc

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        return world.fail(str(exc))
    except FileNotFoundError as exc:
        return world.fail(str(exc))
    except grpc.RpcError as exc:
        return world.fail(f"{exc.code().name}: {exc.details()}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
