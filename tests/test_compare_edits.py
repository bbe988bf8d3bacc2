"""bench/compare_edits.py: two bench results compared edit by edit, through its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "compare_edits.py"


def write_result(path: Path, rounds: dict[int, tuple[list[int], list[int]]]) -> Path:
    """A bench/edit_quality.py-shaped result: per round, the causal editor's per-edit success and preservation."""
    rows = [{"round": r, "archs": {"causal": {"per_edit": {"success": s, "preservation": p}}}}
            for r, (s, p) in rounds.items()]
    path.write_text(json.dumps({"rounds": rows}))
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_counts_gains_losses_and_exact_p(tmp_path: Path) -> None:
    # round 1 -> 2: success 5 gained, 0 lost (p = 2 / 2**5); preservation 1 gained, 1 lost (p = 1)
    res = write_result(tmp_path / "r.json", {1: ([0] * 5 + [1] * 3, [1, 0, 0, 0, 0, 0, 0, 0]),
                                             2: ([1] * 8, [0, 1, 0, 0, 0, 0, 0, 0])})
    out = run(f"{res}:1", str(res))  # B: the last round by default
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "| success | 3/8 | 8/8 | 5 | 0 | 0.0625 |" in lines
    assert "| preservation | 1/8 | 1/8 | 1 | 1 | 1 |" in lines


def test_p_value_matches_the_binomial_tail(tmp_path: Path) -> None:
    # 18 gained, 6 lost of 24 discordant edits: p = 2 * P(X <= 6), X ~ Binomial(24, 1/2) = 0.0227
    a = write_result(tmp_path / "a.json", {1: ([0] * 18 + [1] * 6, [0] * 24)})
    b = write_result(tmp_path / "b.json", {1: ([1] * 18 + [0] * 6, [0] * 24)})
    out = run(str(a), str(b))
    assert out.returncode == 0, out.stderr
    assert "| success | 6/24 | 18/24 | 18 | 6 | 0.0227 |" in out.stdout.splitlines()


def test_bad_round_and_mismatched_edits_are_named(tmp_path: Path) -> None:
    a = write_result(tmp_path / "a.json", {1: ([1, 0], [1, 0])})
    b = write_result(tmp_path / "b.json", {1: ([1, 0, 1], [1, 0, 1])})
    out = run(f"{a}:3", str(b))
    assert out.returncode != 0
    assert "round must be one of [1]" in out.stderr and "got 3" in out.stderr
    out = run(str(a), str(b))
    assert out.returncode != 0
    assert "both sides must judge the same edits, got 2 and 3" in out.stderr
