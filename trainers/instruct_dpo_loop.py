"""The loop's instruction-editor DPO leg: enough new labels on instruction-edit sets start a Diffusion-DPO run of
the instruction editor (trainers/align/dpo.py) from the promoted instruct version.

New labels are the valid labels on instruction-edit sets newer than every label the newest DPO run of the
instruction editor pinned (succeeded, refused at the gate, or failed: a run that did not move the editor does not
make the loop retrain at once on the same labels). `loop_instruct_dpo_labels` of them start a run (0, the
default: the leg is off); `loop_instruct_dpo_config` holds its settings as JSON (steps, batch_size, dpo_beta, lr,
lora_rank, eval_per_kind, ...). Like the other legs: decided under the loop's lock, debounced while a DPO run of
the instruction editor is queued or running, recorded with its trigger before its message is sent, gated and
promoted by the run as by hand, paused with `editloop loop pause`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import Preference, TrainingRun
from editloop.registry import promoted
from editloop.settings import Settings
from trainers.autoloop import LoopDecision, decide_and_record, held_back, json_setting


@dataclass(frozen=True)
class InstructDpoPolicy:
    labels: int  # new instruction-edit labels that start a run (0: off)
    config: dict


def instruct_dpo_policy(settings: Settings) -> InstructDpoPolicy:
    """The policy from settings; ValueError naming the setting, its value and the limit."""
    from trainers.align.dpo import MIN_LABELS
    from trainers.align.tuning import split_config

    labels = settings.loop_instruct_dpo_labels
    if labels != 0 and not MIN_LABELS <= labels <= 1_000_000:
        raise ValueError(f"`EDITLOOP_LOOP_INSTRUCT_DPO_LABELS` must be 0 (off) or in {MIN_LABELS}..1000000 (a DPO "
                         f"run needs {MIN_LABELS} labels at least), got {labels}")
    config = json_setting("EDITLOOP_LOOP_INSTRUCT_DPO_CONFIG", settings.loop_instruct_dpo_config, "DPO settings",
                          split_config)
    return InstructDpoPolicy(labels, config)


def new_instruct_labels(session: Session, newest: TrainingRun | None) -> int:
    """Valid labels on instruction-edit sets newer than every label `newest` (the newest DPO run) pinned."""
    from trainers.align.dpo import instruct_label_query

    since = max((newest.inputs or {}).get("labels") or [0]) if newest is not None else 0
    return session.scalar(select(func.count()).select_from(
        instruct_label_query().where(Preference.id > since).order_by(None).subquery())) or 0


def decide_instruct_dpo(session: Session, pol: InstructDpoPolicy) -> LoopDecision:
    from trainers.align.dpo import KIND

    if pol.labels == 0:
        return LoopDecision(False, "off (EDITLOOP_LOOP_INSTRUCT_DPO_LABELS=0)")
    newest = session.scalars(select(TrainingRun).where(TrainingRun.kind == KIND)
                             .order_by(TrainingRun.created_at.desc())).first()
    if why := held_back(session, newest, "instruct DPO run"):
        return LoopDecision(False, why)
    count = new_instruct_labels(session, newest)
    if count >= pol.labels:
        return LoopDecision(True, f"new instruction-edit labels: {count} >= {pol.labels}")
    return LoopDecision(False, f"{count} new instruction-edit labels of {pol.labels}")


def check_instruct_dpo(sessions: sessionmaker[Session], settings: Settings,
                       send: Callable[[str, dict, str | None], None], source: str = "schedule") -> LoopDecision:
    """Decide under the loop's lock; a starting run's row is committed (with its trigger) before it is sent."""
    from trainers.chains import add_instruct_tuning_row

    pol = instruct_dpo_policy(settings)
    if not settings.loop_enabled:
        return LoopDecision(False, "off (EDITLOOP_LOOP_ENABLED=false)")
    started: dict[str, str | None] = {}

    def record(session: Session, trigger: str) -> list[str]:
        current = promoted(session, "instruct")  # the run starts from the promoted instruct version
        started["version"] = current.version if current is not None else None
        return [add_instruct_tuning_row(session, pol.config, trigger, started["version"])]

    decision = decide_and_record(sessions, lambda s: decide_instruct_dpo(s, pol), record, source)
    if decision.start:
        send(decision.run_ids[0], pol.config, started["version"])
    return decision
