"""The loop's last leg: new candidate sets from the served editor, chosen and pushed to Label Studio.

Labels of the base model's samples stop describing the model once feedback learning moves it (BENCHMARKS.md,
"what PeFL does to its reward"), so whenever the served editor changes (a promoted feedback stage, or the base
when nothing was promoted yet) the loop makes a pool of edit candidate sets from it, keeps the ones worth an
annotator's time (trainers.label_selection: "active" ranks them by the aesthetic reward's uncertainty and the
sets' diversity, "random" draws), mixes in `loop_label_gold` gold sets (known answers, measuring each annotator:
editloop.labels.gold) and pushes them to Label Studio. `check_label_sets` runs after every editor
promotion and on the beat schedule; under the loop's lock it records a `label-sets` run (with its trigger) and
only then sends its task. One batch per served editor version, and another for the same editor once the last
one is fully labelled (`loop_label_when_done`: every pushed set has `overlap` answers, so annotators are never
left idle while the reward waits for labels) or after `loop_label_interval_s` (when set); a failed batch is tried
again after `LABEL_RETRY_INTERVALS` loop intervals. `editloop loop pause` stops it too.

The run's task (`make_label_sets`, gpu queue) makes the pool set by set (each committed, idempotent by key, so a
redelivered task resumes), chooses and pushes (annotation.push, idempotent by each task's external key); when
Label Studio cannot be reached the run fails with the reason and its sets stay for `editloop annotation push`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import TrainingRun, as_utc
from editloop.guidances import parse_guidances
from editloop.settings import Settings
from trainers.autoloop import LoopDecision, decide_and_record, held_back
from trainers.label_selection import check_selection

KIND = "label-sets"
LABEL_RETRY_INTERVALS = 10
SEED_STRIDE = 1_000  # each batch's world examples start this far after the batch before's (sets <= 1000)


@dataclass(frozen=True)
class LabelSetsPolicy:
    sets: int  # pushed per batch
    images: int
    pool: int  # made per batch = pool x sets; the best `sets` are pushed
    selection: str
    overlap: int
    interval_s: float
    gold: int = 0  # gold sets mixed in (editloop.labels.gold), measuring each annotator
    when_done: bool = False  # another batch for the same editor once the last one is fully labelled
    guidances: tuple[float, ...] | None = None  # each image of a set at its own guidance (cycled); None: one for all


def label_policy(settings: Settings) -> LabelSetsPolicy:
    """The policy from settings; ValueError naming the setting, its value and the limit."""
    checks = (("loop_label_sets", 0, SEED_STRIDE), ("loop_label_images", 2, 16), ("loop_label_pool", 1, 10),
              ("loop_label_overlap", 1, 20), ("loop_label_gold", 0, 100))
    for name, low, high in checks:
        value = getattr(settings, name)
        if not low <= value <= high:
            raise ValueError(f"`EDITLOOP_{name.upper()}` must be in {low}..{high}, got {value}")
    check_selection(settings.loop_label_selection, "EDITLOOP_LOOP_LABEL_SELECTION")
    guidances = parse_guidances(settings.loop_label_guidances, "EDITLOOP_LOOP_LABEL_GUIDANCES")
    if settings.loop_label_interval_s < 0:
        raise ValueError(f"`EDITLOOP_LOOP_LABEL_INTERVAL_S` must be >= 0 (0: only when the served editor "
                         f"changes), got {settings.loop_label_interval_s}")
    return LabelSetsPolicy(settings.loop_label_sets, settings.loop_label_images, settings.loop_label_pool,
                           settings.loop_label_selection, settings.loop_label_overlap,
                           settings.loop_label_interval_s, settings.loop_label_gold,
                           settings.loop_label_when_done, guidances)


def served_editor(session: Session) -> str:
    from editloop.registry import promoted

    row = promoted(session, "editor")
    return row.version if row is not None else "base"


def decide_label_sets(session: Session, pol: LabelSetsPolicy, loop_interval_s: float,
                      now: datetime | None = None) -> LoopDecision:
    now = now or datetime.now(UTC)
    if pol.sets == 0:
        return LoopDecision(False, "off (EDITLOOP_LOOP_LABEL_SETS=0)")
    runs = session.scalars(select(TrainingRun).where(TrainingRun.kind == KIND)
                           .order_by(TrainingRun.created_at.desc())).all()
    if why := held_back(session, runs[0] if runs else None, "label-sets run"):
        return LoopDecision(False, why)
    editor = served_editor(session)
    for run in runs:
        if run.inputs.get("editor") != editor:
            continue
        age = now - as_utc(run.created_at)
        if run.status == "failed" and age < timedelta(seconds=LABEL_RETRY_INTERVALS * loop_interval_s):
            return LoopDecision(False, f"label-sets run {run.id[:12]} for editor {editor} failed "
                                        f"({run.error}); tried again later")
        if run.status == "succeeded":
            if pol.when_done and not feedback_busy(session) and (done := batch_labelled(session, run, pol.overlap)):
                return LoopDecision(True, f"editor {editor} served; batch {run.id[:12]} labelled ({done})")
            if pol.interval_s == 0 or age < timedelta(seconds=pol.interval_s):
                return LoopDecision(False, f"editor {editor}'s sets were made by run {run.id[:12]}")
    return LoopDecision(True, f"editor {editor} served" + (" (schedule)" if any(
        r.inputs.get("editor") == editor for r in runs) else ""))


def feedback_busy(session: Session) -> bool:
    """A feedback round is queued or running: the served editor may change soon, and its own batch follows."""
    return session.scalar(select(func.count()).select_from(TrainingRun).where(
        TrainingRun.kind.like("feedback-%"), TrainingRun.status.in_(("queued", "running")))) > 0


def batch_labelled(session: Session, run: TrainingRun, overlap: int) -> str | None:
    """'N answers on M sets' when every set the batch pushed (gold included) has `overlap` answers, else None."""
    from editloop.db.models import Preference

    outputs = run.outputs or {}
    pushed = [*outputs.get("chosen", []), *outputs.get("gold", [])]
    if not pushed:
        return None
    counts = dict(session.execute(select(Preference.candidate_set_id, func.count()).where(
        Preference.candidate_set_id.in_(pushed)).group_by(Preference.candidate_set_id)).all())
    if any(counts.get(set_id, 0) < overlap for set_id in pushed):
        return None
    return f"{sum(counts.values())} answers on {len(pushed)} sets"


def add_label_run(session: Session, pol: LabelSetsPolicy, trigger: str) -> str:
    """The queued run row of a new batch: its editor, its examples' seed (past every earlier batch's)."""
    from trainers.edit_sets import LABEL_SEED

    batch = session.scalar(select(func.count()).select_from(TrainingRun).where(TrainingRun.kind == KIND)) or 0
    run_id = uuid.uuid4().hex
    session.add(TrainingRun(id=run_id, kind=KIND, status="queued", inputs={
        "trigger": trigger, "editor": served_editor(session), "seed": LABEL_SEED + SEED_STRIDE * pol.pool * batch,
        "config": asdict(pol)}))
    return run_id


def check_label_sets(sessions: sessionmaker[Session], settings: Settings, send: Callable[[str], None],
                     source: str = "schedule", down: Callable[[Settings], str | None] | None = None
                     ) -> LoopDecision:
    """Decide under the loop's lock; a starting batch's row is committed (with its trigger) before it is sent.
    Nothing starts while Label Studio is not up (`down` says why; default: label_studio_down)."""
    pol = label_policy(settings)
    if not settings.loop_enabled:
        return LoopDecision(False, "off (EDITLOOP_LOOP_ENABLED=false)")
    if pol.sets and (why := (down or label_studio_down)(settings)):
        return LoopDecision(False, f"waiting for Label Studio: {why}")
    decision = decide_and_record(sessions, lambda s: decide_label_sets(s, pol, settings.loop_interval_s),
                                 lambda s, trigger: [add_label_run(s, pol, trigger)], source)
    if decision.start:
        send(decision.run_id)
    return decision


def label_studio_down(settings: Settings) -> str | None:
    """Why the sets could not be pushed now (Label Studio not started, or not answering), else None."""
    import requests

    from annotation.server import LabelStudioError, label_studio_info

    try:
        url = label_studio_info(settings).url
    except LabelStudioError as exc:
        return str(exc)
    try:
        requests.get(f"{url}/health", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        return f"{url} does not answer ({type(exc).__name__})"
    return None


def make_label_sets(run_id: str, sessions: sessionmaker[Session], store, settings: Settings,
                    progress: Callable[[int, int], None], push: Callable[[list[int], int], dict]) -> dict:
    """Make the pool, choose, push; the run row records every step (outputs: made, chosen with their
    priorities, pushed)."""
    from trainers import candidates
    from trainers.edit_sets import EditSetsRequest, edit_set_specs
    from trainers.runs import update_run

    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        if run is None:
            raise ValueError(f"no label-sets run {run_id}")
        if run.status == "succeeded":
            return run.outputs
        run.status, run.error = "running", None
        inputs = dict(run.inputs)
    pol = LabelSetsPolicy(**inputs["config"])
    try:
        request = EditSetsRequest(editor=inputs["editor"], sets=pol.sets * pol.pool, images=pol.images,
                                  seed=inputs["seed"], guidances=tuple(pol.guidances) if pol.guidances else None)
        specs = edit_set_specs(request, inputs["editor"], store)
        ids = []
        for i, spec in enumerate(specs):
            with sessions.begin() as s:
                ids.append(candidates.run(candidates.CandidateSpec(**spec), s, store, settings))
            progress(i + 1, len(specs))
            update_run(sessions, run_id, progress=0.9 * (i + 1) / len(specs))
        chosen, priorities = choose(ids, pol, sessions, store, settings, inputs["seed"])
        gold = gold_sets(sessions, store, run_id, pol, inputs["seed"])
        outputs = {"editor": inputs["editor"], "made": ids, "chosen": chosen, "selection": pol.selection,
                   "priorities": {str(k): v for k, v in priorities.items()}, "gold": gold}
        update_run(sessions, run_id, outputs=outputs)
        outputs["pushed"] = push(sorted(chosen + gold), pol.overlap)
        update_run(sessions, run_id, status="succeeded", progress=1.0, outputs=outputs)
        return outputs
    except Exception as exc:
        update_run(sessions, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise


def gold_sets(sessions: sessionmaker[Session], store, run_id: str, pol: LabelSetsPolicy, seed: int) -> list[int]:
    """The batch's gold sets: made once (a redelivered task finds them on its run row), scenes apart per batch."""
    from editloop.labels.gold import GOLD_SEED, make_gold_sets
    from trainers.edit_sets import LABEL_SEED

    with sessions.begin() as s:  # made and recorded on the run in one transaction: never twice
        run = s.get(TrainingRun, run_id)
        made = (run.outputs or {}).get("gold")
        if made is not None or pol.gold == 0:
            return list(made or [])
        made = make_gold_sets(s, store, pol.gold, pol.images, GOLD_SEED + (seed - LABEL_SEED))
        run.outputs = {**(run.outputs or {}), "gold": made}
    return made


def choose(ids: list[int], pol: LabelSetsPolicy, sessions: sessionmaker[Session], store, settings: Settings,
           seed: int) -> tuple[list[int], dict[int, dict]]:
    """The candidate sets to push, and each made set's priorities (active selection) or {} (random)."""
    import numpy as np
    from sqlalchemy.orm import selectinload

    from editloop.db.models import CandidateSet, ImageRecord
    from editloop.world.io import from_png, mask_from_png
    from trainers.label_selection import choose_sets, set_priorities

    if pol.selection == "random" or pol.pool == 1:
        picked = choose_sets([{"priority": 0.0}] * len(ids), pol.sets, "random", seed)
        return [ids[i] for i in picked], {}
    sets, prompts, contexts = [], [], []
    with sessions() as s:
        rows = s.scalars(select(CandidateSet).options(selectinload(CandidateSet.items))
                         .where(CandidateSet.id.in_(ids))).all()
        by_id = {r.id: r for r in rows}
        for set_id in ids:
            cs = by_id[set_id]
            sets.append(np.stack([from_png(store.get(i.image.blob_key), "candidate") for i in cs.items]))
            prompts.append(cs.prompt.text)
            source = s.get(ImageRecord, cs.source_image_id) if cs.source_image_id else None
            contexts.append((from_png(store.get(source.blob_key), "source") if source else None,
                             mask_from_png(store.get(cs.mask_key)) if cs.mask_key else None))
    priorities = set_priorities(sets, prompts, aesthetic_reward(sessions, store, settings), contexts)
    picked = choose_sets(priorities, pol.sets, "active", seed)
    return [ids[i] for i in picked], dict(zip(ids, priorities))


def aesthetic_reward(sessions: sessionmaker[Session], store, settings: Settings):
    """The promoted aesthetic reward (RewardModels), or None when none is promoted (diversity alone ranks)."""
    from editloop.registry import promoted
    from trainers.feedback.run import promoted_rewards

    with sessions() as s:
        if promoted(s, "aesthetic") is None:
            return None
    return promoted_rewards(sessions, store, settings, ["aesthetic"])
