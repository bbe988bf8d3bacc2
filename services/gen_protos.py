"""Regenerate services/gen/ from proto/ (generated code: do not edit by hand).

    .venv/bin/python -m services.gen_protos [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GEN = ROOT / "services" / "gen"
HEADER = "# Generated from proto/ by `python -m services.gen_protos`. Do not edit.\n"


def generate(dest: Path) -> None:
    from grpc_tools import protoc

    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    dest.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={dest}", f"--pyi_out={dest}",
            f"--grpc_python_out={dest}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in dest.rglob("*.py*"):
        text = path.read_text()
        # generated modules import `editloop.v1...`; make that package-relative to services.gen
        text = text.replace("from editloop.v1 import", "from services.gen.editloop.v1 import")
        path.write_text(HEADER + text if path.suffix == ".py" else text)
    for pkg in [dest, *[p for p in dest.rglob("*") if p.is_dir()]]:
        (pkg / "__init__.py").write_text(HEADER)


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "gen"
        generate(fresh)
        names = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
        names |= {p.relative_to(GEN) for p in GEN.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        return sorted(str(n) for n in names
                      if not (fresh / n).is_file() or not (GEN / n).is_file()
                      or not filecmp.cmp(fresh / n, GEN / n, shallow=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if services/gen is stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated files (run python -m services.gen_protos):", *stale, sep="\n  ")
            return 1
        return 0
    shutil.rmtree(GEN, ignore_errors=True)
    generate(GEN)
    print(f"wrote {GEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
