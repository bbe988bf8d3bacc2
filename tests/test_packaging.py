"""pyproject.toml declares what each part imports: the kernel's imports are in the core dependencies, each app's
in its role's extra (serve, train, annotate), the CLI's in the roles together; CI installs from the constraints
file."""

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"editloop", "services", "trainers", "annotation"}
# (files, the extras whose dependencies they may import besides the core); files are matched most specific first
PARTS = [("editloop/cli", ("serve", "train", "annotate")), ("editloop", ()), ("services/gen_protos.py", ("dev",)),
         ("services", ("serve",)), ("trainers", ("train",)), ("annotation", ("annotate",))]


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return normal(re.match(r"[A-Za-z0-9_.-]+", req).group(0))


def declared(project: dict, extras: tuple[str, ...]) -> set[str]:
    """The distributions the core and `extras` declare, self-references (editloop[...]) expanded."""
    out = {requirement_name(r) for r in project["dependencies"]}
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            if requirement_name(req) == "editloop":
                todo += re.search(r"\[(.*)\]", req).group(1).split(",")
            else:
                out.add(requirement_name(req))
    return out


def third_party_imports(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return {t for t in tops if t not in sys.stdlib_module_names and t not in LOCAL}


def part_of(rel: str) -> tuple[str, tuple[str, ...]]:
    for prefix, extras in PARTS:
        if rel == prefix or rel.startswith(prefix + "/"):
            return prefix, extras
    raise AssertionError(f"{rel} belongs to no part")


def test_every_import_is_declared_for_its_part():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dists = md.packages_distributions()
    missing = []
    for pkg in LOCAL:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            part, extras = part_of(rel)
            allowed = declared(project, extras)
            for module in sorted(third_party_imports(path)):
                owners = {normal(d) for d in dists.get(module, [])}
                assert owners, f"{rel} imports {module!r}, which no installed distribution provides"
                if not owners & allowed:
                    missing.append(f"{rel}: {module} ({'/'.join(sorted(owners))}) is not declared for {part} "
                                   f"(core + {list(extras)})")
    assert not missing, "\n".join(missing)


def test_the_core_is_small_and_the_roles_add_their_apps():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = declared(project, ())
    assert not core & {"grpcio", "celery", "label-studio-sdk", "prometheus-client", "tensorboard"}
    assert "grpcio" in declared(project, ("serve",)) and "celery" in declared(project, ("train",))
    assert "label-studio-sdk" in declared(project, ("annotate",))
    assert declared(project, ("dev",)) >= declared(project, ("all",))  # the suite installs every role


def test_ci_installs_from_the_constraints_file():
    bootstrap = (ROOT / "infra" / "bootstrap.sh").read_text()
    assert "-c infra/constraints.txt" in bootstrap and '".[dev]"' in bootstrap
    pins = {normal(line.split("==")[0]) for line in (ROOT / "infra" / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert declared(project, ("dev", "cluster")) <= pins  # every declared distribution is pinned
