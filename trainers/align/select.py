"""What a round keeps: its pairs generated, filtered and, in rounds after the first, chosen per edit spec.

Round 1 keeps the weak generator's pairs that pass `filter`. A later round's pairs (`RoundConfig.later_pairs`):
- "editor": every candidate of the editor's that passes `later_filter` (several per spec when several pass);
- "editor-best": at most one candidate per spec, the passing one that changes the least outside the edit region,
  so specs the editor finds easy do not count several times over the ones it finds hard;
- "best-or-weak": "editor-best", and for each spec none of whose candidates passes, the weak generator's pair for
  it if that passes `filter` (the inpainting generator edits the editor's own source; the text-to-image one makes
  its own): a round's point is that the editor regenerates pairs better than the weak generator's, and where it
  cannot yet, the weak generator's pair stands in, so a round's pairs cover every kind;
- "weak": the weak generator's pairs for the round's new specs alone (the control: new data without the editor).
"""

from __future__ import annotations

import numpy as np

from editloop.models.instruct import InstructEditor
from trainers.align.filters import Scorer, count_kinds, filter_pairs, region_l1
from trainers.align.pairs import Pairs, candidate_specs
from trainers.align.round_config import RoundConfig, round_pairs


def best_per_spec(pairs: Pairs, keep: np.ndarray, n_specs: int) -> np.ndarray:
    """Row indices of `pairs` (the editor's candidates, `candidate_specs` order): for each spec with a kept
    candidate, the kept one with the least mean change outside the edit region (ties: the first candidate)."""
    specs = candidate_specs(len(pairs), n_specs)
    _, outside = region_l1(pairs.sources, pairs.targets, pairs.masks)
    outside = np.nan_to_num(outside, nan=0.0)  # an edit covering everything has nothing outside
    best: dict[int, int] = {}
    for row in np.flatnonzero(keep):
        s = int(specs[row])
        if s not in best or outside[row] < outside[best[s]]:
            best[s] = int(row)
    return np.array(sorted(best.values(), key=lambda r: specs[r]), dtype=np.int64)


def kept_round_pairs(round_no: int, cfg: RoundConfig, editor: InstructEditor | None, scorer: Scorer,
                     device: str | None) -> tuple[Pairs, dict]:
    """Round `round_no`'s kept pairs and the counts to record with it (`kept` and `kept_per_kind` are the final
    pairs'; `filter_pairs`'s counts are those of the editor's candidates in later rounds, the weak generator's
    otherwise, with the weak generator's fill-in counted under `weak`)."""
    if round_no == 1 or editor is None or cfg.later_pairs == "weak":
        weak = round_pairs(round_no, cfg, None, device)
        keep, counts = filter_pairs(weak, scorer, cfg.filter)
        return weak.select(keep), counts if round_no == 1 else {**counts, "later_pairs": cfg.later_pairs}
    own = round_pairs(round_no, cfg, editor, device)
    keep, counts = filter_pairs(own, scorer, cfg.filter_for(round_no))
    counts["later_pairs"] = cfg.later_pairs
    if cfg.later_pairs == "editor":
        return own.select(keep), counts
    rows = best_per_spec(own, keep, cfg.pairs)
    kept = own.select(rows)
    counts["best_per_spec"], counts["best_per_kind"] = len(kept), count_kinds(kept.kinds, own.kinds)
    if cfg.later_pairs == "best-or-weak":
        weak = round_pairs(round_no, cfg, None, device)
        wkeep, wcounts = filter_pairs(weak, scorer, cfg.filter)
        missing = np.ones(cfg.pairs, dtype=bool)
        missing[candidate_specs(len(own), cfg.pairs)[rows]] = False
        fill = wkeep & missing
        counts["weak"] = {"total": wcounts["total"], "kept": wcounts["kept"], "after": wcounts["after"],
                          "specs_without_own": int(missing.sum()), "filled": int(fill.sum())}
        parts = [p for p in (kept, weak.select(fill)) if len(p)]
        kept = Pairs.concat(parts) if parts else kept
    counts["kept"], counts["kept_per_kind"] = len(kept), count_kinds(kept.kinds, own.kinds)
    return kept, counts
