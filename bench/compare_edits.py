"""Two editors judged on the same held-out edits, compared edit by edit (exact McNemar test; issue 7)

For versions in the registry, `editloop eval compare A B` does this on stored evaluations; this script reads
bench/edit_quality.py result files.

    .venv/bin/python bench/compare_edits.py bench/results/edit_quality_weak_long.json:1 \
        bench/results/edit_quality_weak_long.json:2

Each side is `RESULT.json[:ROUND[:ARCH]]`, a bench/edit_quality.py result (ROUND defaults to its last round, ARCH
to the round's first architecture). For success and preservation it counts the edits each side gets right, the
edits only B gets right (gained) and only A (lost), and the exact two-sided McNemar p-value: the chance, were the
two editors equally good, of a split among the edits that changed verdict at least this uneven. Both sides must
have been judged on the same held-out edits (same --eval-per-kind).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainers.evaluation.compare import compare_verdicts as compare


def per_edit(spec: str) -> tuple[str, dict[str, list[int]]]:
    """The per-edit verdicts named by `RESULT.json[:ROUND[:ARCH]]`, with a label for the side."""
    path, _, rest = spec.partition(".json")
    path += ".json"
    parts = [p for p in rest.split(":") if p]
    result = json.loads(Path(path).read_text())
    rounds = result["rounds"]
    if not rounds:
        raise ValueError(f"`{path}` holds no finished round")
    round_no = int(parts[0]) if parts else rounds[-1]["round"]
    row = next((r for r in rounds if r["round"] == round_no), None)
    if row is None:
        raise ValueError(f"round must be one of {[r['round'] for r in rounds]} in `{path}`, got {round_no}")
    arch = parts[1] if len(parts) > 1 else next(iter(row["archs"]))
    if arch not in row["archs"]:
        raise ValueError(f"arch must be one of {sorted(row['archs'])} in `{path}` round {round_no}, got {arch!r}")
    return f"{Path(path).stem}:{round_no}:{arch}", row["archs"][arch]["per_edit"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="RESULT.json[:ROUND[:ARCH]], the reference side")
    ap.add_argument("b", help="RESULT.json[:ROUND[:ARCH]], the side compared with it")
    args = ap.parse_args()
    try:
        (name_a, a), (name_b, b) = per_edit(args.a), per_edit(args.b)
        rows = compare(a, b)
    except (OSError, KeyError, ValueError) as e:
        ap.error(str(e))
    print(f"A = {name_a}\nB = {name_b}")
    print("| metric | A | B | gained (B only) | lost (A only) | McNemar p |\n| --- | --- | --- | --- | --- | --- |")
    for m, r in rows.items():
        print(f"| {m} | {r['a']}/{r['n']} | {r['b']}/{r['n']} | {r['gained']} | {r['lost']} | {r['p']:.3g} |")


if __name__ == "__main__":
    main()
