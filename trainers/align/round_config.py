"""An alignment round's settings and its pairs before filtering (the weak generator's in round 1, the editor's
afterwards). Nothing here touches the database or the blob store, so benchmarks (and a GPU machine without the
platform's services) can run rounds with it; trainers/align/run.py is the round as the Celery task runs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from editloop.models.base import load_base
from editloop.models.configs import check_schedule
from editloop.models.instruct import InstructEditor
from trainers.align.editor_train import EditorTrainConfig, check_init
from trainers.align.filters import SCORERS, FilterConfig
from trainers.align.pairs import (
    Pairs,
    edit_specs,
    editor_pairs,
    generated_sources,
    inpaint_pairs,
    rendered_sources,
    weak_pairs,
)

SOURCES = ("render", "t2i")
METHODS = ("inpaint", "blend")
LATER_PAIRS = ("editor", "editor-best", "best-or-weak", "weak")  # what rounds after the first keep: select.py


def from_settings(kind: type, what: str, data: dict[str, Any]) -> Any:
    """Dataclass `kind` from settings dict `data`; an unknown key gets a ValueError naming it (`what` settings)
    rather than the constructor's TypeError."""
    unknown = set(data) - set(kind.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} settings: {sorted(unknown)}")
    return kind(**data)


@dataclass(frozen=True)
class RoundConfig:
    arch: str = "causal"
    pairs: int = 384  # edit specs per round
    candidates: int = 1  # the editor's candidates per spec (rounds after the first)
    pair_steps: int = 12  # sampling steps of the pair generators
    source: str = "render"  # inputs: degraded renders ("photos") or text-to-image samples
    method: str = "inpaint"  # first round: inpainting model (region-based) or text-to-image latent blending
    # method "blend": the fraction of sampling steps whose latents outside the edit region are the source's; 0 shares
    # the initial noise alone, so the generator never sees the edit region (SeedEdit's weak text-to-image generator)
    blend_until: float = 1.0
    scorer: str = "auto"  # alignment reward if one is promoted, else the world judge
    schedule: str | None = None  # a new editor's noise schedule: None = its base's, or "zero-snr-v"
    init: str = "t2i"  # a new editor starts from the text-to-image model, or (concat only) the inpainting model
    filter: FilterConfig = field(default_factory=FilterConfig)
    # rounds after the first: the filters for the editor's own pairs (None: `filter`); SeedEdit's later rounds keep
    # only the editor's best edits, e.g. min_agreement 1.0 (the judge reads every attribute of both captions)
    later_filter: FilterConfig | None = None
    later_pairs: str = "editor"  # one of LATER_PAIRS (trainers/align/select.py)
    min_pairs: int = 32
    keep_previous: bool = True  # train on the earlier rounds' kept pairs too
    train: EditorTrainConfig = field(default_factory=EditorTrainConfig)
    eval_per_kind: int = 8
    auto_promote: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("source", self.source, SOURCES), ("method", self.method, METHODS),
                                     ("scorer", self.scorer, (*SCORERS, "auto")),
                                     ("later_pairs", self.later_pairs, LATER_PAIRS)):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}")
        if self.schedule is not None:
            check_schedule(self.schedule)
        check_init(self.arch, self.init)
        if not 0.0 <= self.blend_until <= 1.0:
            raise ValueError(f"`blend_until` must be in [0, 1], got {self.blend_until}")
        if self.pairs < 1 or self.candidates < 1:
            raise ValueError(f"`pairs` and `candidates` must be >= 1, got {self.pairs} and {self.candidates}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundConfig:
        later = data.get("later_filter")
        nested = {"filter": from_settings(FilterConfig, "`filter`", data.get("filter", {})),
                  "later_filter": None if later is None else from_settings(FilterConfig, "`later_filter`", later),
                  "train": from_settings(EditorTrainConfig, "`train`", data.get("train", {}))}
        return from_settings(cls, "alignment round", {**data, **nested})

    def filter_for(self, round_no: int) -> FilterConfig:
        """The filters of round `round_no`: `filter` for the weak generator's pairs, `later_filter` (if set) for
        the editor's own."""
        return self.later_filter if round_no > 1 and self.later_filter is not None else self.filter

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def round_pairs(round_no: int, cfg: RoundConfig, editor: InstructEditor | None, device: str | None) -> Pairs:
    """All pairs of a round before filtering: the weak generator's in round 1, the editor's afterwards."""
    seed = 1000 * cfg.seed + round_no  # training specs: small seeds; held-out edits use 770000+
    specs = edit_specs(cfg.pairs, seed)
    if editor is None and cfg.method == "blend":
        return weak_pairs(load_base("t2i", device=device, dtype="fp32"), specs, seed, cfg.pair_steps,
                          blend_until=cfg.blend_until)
    if cfg.source == "render":
        sources = rendered_sources(specs, seed)
    else:
        sources = generated_sources(load_base("t2i", device=device, dtype="fp32"), specs, seed, cfg.pair_steps)
    if editor is None:
        return inpaint_pairs(load_base("inpaint", device=device, dtype="fp32"), specs, sources, seed, cfg.pair_steps)
    return editor_pairs(editor, specs, sources, seed, cfg.candidates, steps=cfg.pair_steps)


