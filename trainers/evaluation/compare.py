"""Two evaluations of the same suite compared edit by edit: for each judged verdict (success, preservation) the
edits each side gets right, the edits only B gets right (gained) and only A (lost), and the exact two-sided
McNemar p-value: the chance, were the two editors equally good, of a split among the edits that changed verdict
at least this uneven. Continuous per-item metrics (L1 / PSNR / SSIM, rewards) get their mean difference B - A and
the share of items where B is higher."""

from __future__ import annotations

import numpy as np

from editloop.labels.stats import sign_test_p

VERDICTS = ("success", "preservation")


def mcnemar_exact(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value for `gained` and `lost` discordant edits (binomial, p = 1/2)."""
    if gained < 0 or lost < 0:
        raise ValueError(f"`gained` and `lost` must be counts, got {gained} and {lost}")
    return min(1.0, 2 * sign_test_p(max(gained, lost), min(gained, lost)))  # the binomial is symmetric


def compare_verdicts(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, dict]:
    """Per verdict both sides have: edits right under A and under B, gained (B only), lost (A only), McNemar's p."""
    out = {}
    for m in VERDICTS:
        if m not in a or m not in b:
            continue
        if len(a[m]) != len(b[m]):
            raise ValueError(f"both sides must judge the same edits, got {len(a[m])} and {len(b[m])} {m} verdicts")
        gained = sum(1 for x, y in zip(a[m], b[m]) if y and not x)
        lost = sum(1 for x, y in zip(a[m], b[m]) if x and not y)
        out[m] = {"a": sum(a[m]), "b": sum(b[m]), "n": len(a[m]), "gained": gained, "lost": lost,
                  "p": mcnemar_exact(gained, lost)}
    return out


def compare_continuous(a: dict[str, list], b: dict[str, list]) -> dict[str, dict]:
    """Per numeric per-item metric both sides have: mean B - A and the share of items where B > A (finite only)."""
    out = {}
    for key in a:
        if key in VERDICTS or key == "id" or key not in b:
            continue
        x = np.array([np.nan if v is None else v for v in a[key]], dtype=float)
        y = np.array([np.nan if v is None else v for v in b[key]], dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if len(x) != len(y) or not ok.any():
            continue
        out[key] = {"a": float(x[ok].mean()), "b": float(y[ok].mean()), "diff": float((y - x)[ok].mean()),
                    "b_higher": float((y[ok] > x[ok]).mean()), "n": int(ok.sum())}
    return out


def compare_items(a: dict[str, list], b: dict[str, list]) -> dict:
    """Two evaluations' per-item records (the same suite, the same items in the same order)."""
    if a.get("id") != b.get("id"):
        raise ValueError("the two evaluations are of different items; evaluate both on the same suite and --n")
    return {"verdicts": compare_verdicts(a, b), "metrics": compare_continuous(a, b), "n": len(a.get("id", []))}
