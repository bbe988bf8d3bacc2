"""Two editors judged on the same held-out edits, compared edit by edit (exact McNemar test; issue 7)

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
from pathlib import Path

from editloop.labels.stats import sign_test_p

METRICS = ("success", "preservation")


def mcnemar_exact(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value for `gained` and `lost` discordant edits (binomial, p = 1/2)."""
    if gained < 0 or lost < 0:
        raise ValueError(f"`gained` and `lost` must be counts, got {gained} and {lost}")
    return min(1.0, 2 * sign_test_p(max(gained, lost), min(gained, lost)))  # the binomial is symmetric


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


def compare(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, dict]:
    """Per metric: edits right under A and under B, gained (B only), lost (A only) and McNemar's p."""
    out = {}
    for m in METRICS:
        if len(a[m]) != len(b[m]):
            raise ValueError(f"both sides must judge the same edits, got {len(a[m])} and {len(b[m])} {m} verdicts")
        gained = sum(1 for x, y in zip(a[m], b[m]) if y and not x)
        lost = sum(1 for x, y in zip(a[m], b[m]) if x and not y)
        out[m] = {"a": sum(a[m]), "b": sum(b[m]), "n": len(a[m]), "gained": gained, "lost": lost,
                  "p": mcnemar_exact(gained, lost)}
    return out


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
