"""Label statistics: volume, agreement between annotators, and GSB (DESIGN.md's formulas).

- pairwise agreement: over every task with two or more valid labels, the share of annotator
  pairs that gave the same answer (best and worst separately);
- Krippendorff's alpha, nominal, from the coincidence matrix: alpha = 1 - D_o / D_e with
  D_o = sum_{c != k} o_ck / n and D_e = sum_{c != k} n_c n_k / (n (n - 1)), units with fewer than
  two values dropped (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability");
- GSB superiority = (G + S) / (S + B); win rate = (G + S) / ((G + S) + (S + B)) (ByteEdit).
Label Studio's community edition has no agreement metrics, so they are computed here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from math import comb

from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import Comparison, ComparisonPair, Preference
from editloop.labels.gold import gold_accuracy


def pairwise_agreement(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Share of agreeing pairs of answers within each unit, over all units with two or more answers."""
    agree = total = 0
    for values in units:
        for a, b in combinations(values, 2):
            agree += a == b
            total += 1
    return agree / total if total else None


def krippendorff_alpha_nominal(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Nominal alpha over units (each a list of the values its annotators gave). None if undefined."""
    coincidence: Counter[tuple[Hashable, Hashable]] = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, a in enumerate(values):
            for j, b in enumerate(values):
                if i != j:
                    coincidence[(a, b)] += 1.0 / (m - 1)
    n_c: Counter[Hashable] = Counter()
    for (a, _), weight in coincidence.items():
        n_c[a] += weight
    n = sum(n_c.values())
    if n <= 1:
        return None
    observed = sum(w for (a, b), w in coincidence.items() if a != b) / n
    expected = sum(n_c[a] * n_c[b] for a in n_c for b in n_c if a != b) / (n * (n - 1))
    if expected == 0:
        return None  # every value identical: agreement is perfect but alpha is undefined
    return 1.0 - observed / expected


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2) (1.0 with no discordant unit)."""
    n = wins + losses
    return sum(comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


@dataclass(frozen=True)
class GSB:
    good: int
    same: int
    bad: int

    @property
    def superiority(self) -> float | None:
        """(G + S) / (S + B), as a ratio (x 100 for the paper's percentage)."""
        denominator = self.same + self.bad
        return (self.good + self.same) / denominator if denominator else None

    @property
    def win_rate(self) -> float | None:
        """(G + S) / ((G + S) + (S + B))."""
        denominator = self.good + 2 * self.same + self.bad
        return (self.good + self.same) / denominator if denominator else None


@dataclass
class LabelStats:
    per_annotator: dict[str, int] = field(default_factory=dict)
    per_day: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    overlapping_tasks: int = 0
    agreement_best: float | None = None
    agreement_worst: float | None = None
    alpha_best: float | None = None
    alpha_worst: float | None = None
    gsb: GSB = field(default_factory=lambda: GSB(0, 0, 0))
    gsb_by_pair_labels: dict[str, GSB] = field(default_factory=dict)
    gold: dict[str, dict[str, float | int]] = field(default_factory=dict)  # per annotator (editloop.labels.gold)


def label_stats(session: Session) -> LabelStats:
    stats = LabelStats()
    prefs = list(session.scalars(select(Preference)))
    comps = list(session.scalars(select(Comparison)))
    rows = prefs + comps
    stats.status = dict(Counter(r.status for r in rows))
    stats.invalid_reasons = dict(Counter(r.reason.split(":")[0] for r in rows if r.status == "invalid" and r.reason))
    valid = [r for r in rows if r.status == "valid"]
    stats.per_annotator = dict(sorted(Counter(r.annotator for r in valid).items()))
    stats.per_day = dict(sorted(Counter(r.created_at.date().isoformat() for r in valid).items()))
    by_set: dict[int, list[Preference]] = defaultdict(list)
    for p in prefs:
        if p.status == "valid":
            by_set[p.candidate_set_id].append(p)
    units_best = [[p.best_image_id for p in group] for group in by_set.values()]
    units_worst = [[p.worst_image_id for p in group] for group in by_set.values()]
    stats.overlapping_tasks = sum(len(u) >= 2 for u in units_best)
    stats.agreement_best, stats.agreement_worst = pairwise_agreement(units_best), pairwise_agreement(units_worst)
    stats.alpha_best = krippendorff_alpha_nominal(units_best)
    stats.alpha_worst = krippendorff_alpha_nominal(units_worst)
    verdicts = Counter(c.verdict for c in comps if c.status == "valid")
    stats.gsb = GSB(verdicts["good"], verdicts["same"], verdicts["bad"])
    pairs = {p.id: f"{p.a_label} vs {p.b_label}" for p in session.scalars(select(ComparisonPair))}
    by_label: dict[str, Counter[str]] = defaultdict(Counter)
    for c in comps:
        if c.status == "valid":
            by_label[pairs[c.pair_id]][c.verdict] += 1
    stats.gsb_by_pair_labels = {k: GSB(v["good"], v["same"], v["bad"]) for k, v in sorted(by_label.items())}
    stats.gold = gold_accuracy(session)
    return stats


def format_stats(stats: LabelStats, names: dict[str, str] | None = None) -> str:
    names = names or {}

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = ["labels by status: " + (", ".join(f"{k} {v}" for k, v in sorted(stats.status.items())) or "none")]
    if stats.invalid_reasons:
        lines.append("invalid, by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.invalid_reasons.items())))
    lines.append("valid labels per annotator:")
    lines += [f"  {names.get(who, who)}: {n}" for who, n in stats.per_annotator.items()]
    lines.append("valid labels per day:")
    lines += [f"  {day}: {n}" for day, n in stats.per_day.items()]
    lines.append(f"best/worst agreement over {stats.overlapping_tasks} overlapping tasks: "
                 f"pairwise best {pct(stats.agreement_best)}, worst {pct(stats.agreement_worst)}; "
                 f"Krippendorff's alpha best {pct(stats.alpha_best)}, worst {pct(stats.alpha_worst)}")
    g = stats.gsb
    lines.append(f"side by side: G {g.good} / S {g.same} / B {g.bad}; GSB superiority {pct(g.superiority)}, "
                 f"win rate {pct(g.win_rate)}")
    for label, g in stats.gsb_by_pair_labels.items():
        lines.append(f"  {label}: G {g.good} / S {g.same} / B {g.bad}; superiority {pct(g.superiority)}, "
                     f"win rate {pct(g.win_rate)}")
    if stats.gold:
        lines.append("accuracy on gold sets (known answers), per annotator:")
        lines += [f"  {names.get(who, who)}: best {g['best']:.3f}, worst {g['worst']:.3f}, both {g['both']:.3f} "
                  f"on {g['gold_labels']} gold labels" for who, g in stats.gold.items()]
    else:
        lines.append("accuracy on gold sets: no gold set labelled yet (`editloop annotation gold`)")
    return "\n".join(lines)
