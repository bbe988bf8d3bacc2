"""The loop's SeedEdit leg: a newly promoted alignment reward (or the schedule) starts alignment rounds.

SeedEdit's rounds regenerate edit pairs with the current editor and keep the pairs the agreement scorer (the
promoted alignment reward, else the world's judge) and the filters pass; a better alignment reward is a better
filter, so its promotion is what starts a chain of `loop_align_rounds` rounds on the instruct editor, continuing
the promoted instruct version (else starting from the weak generator). `loop_align_interval_s` also starts one
that often without a promotion (0: only on a promotion). Like the feedback leg (trainers/autoloop.py): decided
under the loop's lock, debounced while an alignment round is queued or running, recorded with its trigger before
its chain is sent, gated and promoted by each round as by hand, paused with `editloop loop pause`, and the reward
must have beaten chance (`loop_floor_alpha`) to drive it.

`loop_align_method` "grpo" starts one online GRPO run of the instruct editor instead (trainers/align/grpo.py: its
own edits scored against the captions its instructions ask for, by the promoted alignment reward and coherence, the
aesthetic reward held out as the guard); EDITLOOP_LOOP_ALIGN_CONFIG then holds that run's settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import TrainingRun, as_utc
from editloop.registry import promoted
from editloop.settings import Settings
from trainers.autoloop import LoopDecision, below_floor, decide_and_record, held_back, json_setting

KIND = "align"
METHODS = ("rounds", "grpo")


@dataclass(frozen=True)
class AlignPolicy:
    rounds: int
    config: dict
    interval_s: float
    floor_alpha: float
    method: str = "rounds"  # SeedEdit's rounds, or one instruct GRPO run scored by the promoted rewards

    @property
    def run_kind(self) -> str:
        from trainers.align.tuning import KINDS

        return KIND if self.method == "rounds" else KINDS["grpo"]


def align_policy(settings: Settings) -> AlignPolicy:
    """The policy from settings; ValueError naming the setting, its value and the limit."""
    from trainers.align.round_config import RoundConfig

    if not 0 <= settings.loop_align_rounds <= 10:
        raise ValueError(f"`EDITLOOP_LOOP_ALIGN_ROUNDS` must be in 0..10 (0: the loop starts none), got "
                         f"{settings.loop_align_rounds}")
    if settings.loop_align_interval_s < 0:
        raise ValueError(f"`EDITLOOP_LOOP_ALIGN_INTERVAL_S` must be >= 0 (0: only on a promotion), got "
                         f"{settings.loop_align_interval_s}")
    if settings.loop_align_method not in METHODS:
        raise ValueError(f"`EDITLOOP_LOOP_ALIGN_METHOD` must be one of {list(METHODS)}, got "
                         f"{settings.loop_align_method!r}")
    if settings.loop_align_method == "grpo":
        from trainers.align.tuning import split_config

        config = json_setting("EDITLOOP_LOOP_ALIGN_CONFIG", settings.loop_align_config, "GRPO run settings",
                              lambda c: split_config(c, "grpo"))
    else:
        config = json_setting("EDITLOOP_LOOP_ALIGN_CONFIG", settings.loop_align_config, "round settings",
                              RoundConfig.from_dict)
    return AlignPolicy(settings.loop_align_rounds, config, settings.loop_align_interval_s, settings.loop_floor_alpha,
                       settings.loop_align_method)


def decide_align(session: Session, pol: AlignPolicy, now: datetime | None = None) -> LoopDecision:
    now = now or datetime.now(UTC)
    if pol.rounds == 0:
        return LoopDecision(False, "off (EDITLOOP_LOOP_ALIGN_ROUNDS=0)")
    last = session.scalars(select(TrainingRun).where(TrainingRun.kind == pol.run_kind)
                           .order_by(TrainingRun.created_at.desc())).first()
    if why := held_back(session, last, "alignment round" if pol.method == "rounds" else "instruct GRPO run"):
        return LoopDecision(False, why)
    reward = promoted(session, "alignment")
    if reward is not None and (why := below_floor(reward, pol.floor_alpha)):
        return LoopDecision(False, why)
    since = as_utc(last.created_at) if last is not None else None
    if reward is not None and (since is None or as_utc(reward.promoted_at or reward.created_at) > since):
        return LoopDecision(True, f"alignment reward {reward.version} promoted")
    if pol.interval_s and since is not None and now - since >= timedelta(seconds=pol.interval_s):
        return LoopDecision(True, f"schedule: the last alignment round started over {pol.interval_s:.0f}s ago")
    if reward is None:
        return LoopDecision(False, "waiting for a promoted alignment reward (the rounds' agreement filter)")
    return LoopDecision(False, f"no alignment reward promoted since the last round ({last.id[:12]}, {last.status})")


def check_align(sessions: sessionmaker[Session], settings: Settings,
                send: Callable[[list[str], dict, str | None], None], source: str = "schedule",
                send_tuning: Callable[[str, dict, str | None], None] | None = None) -> LoopDecision:
    """Decide under the loop's lock; a starting chain's rows are committed (with their trigger) before it is sent
    (`send` a chain of rounds; `send_tuning` one instruct GRPO run)."""
    from trainers.chains import add_align_rows, add_instruct_tuning_row

    pol = align_policy(settings)
    if not settings.loop_enabled:
        return LoopDecision(False, "off (EDITLOOP_LOOP_ENABLED=false)")
    started: dict[str, str | None] = {}

    def record(session: Session, trigger: str) -> list[str]:
        current = promoted(session, "instruct")  # the chain continues the promoted instruct version
        started["version"] = current.version if current is not None else None
        if pol.method == "grpo":
            return [add_instruct_tuning_row(session, pol.config, trigger, started["version"], "grpo")]
        return add_align_rows(session, pol.rounds, pol.config, trigger, started["version"])

    if pol.method == "grpo" and send_tuning is None:
        raise ValueError("`EDITLOOP_LOOP_ALIGN_METHOD` grpo needs a sender for instruct GRPO runs")
    decision = decide_and_record(sessions, lambda s: decide_align(s, pol), record, source)
    if decision.start and pol.method == "grpo":
        send_tuning(decision.run_ids[0], pol.config, started["version"])
    elif decision.start:
        send(list(decision.run_ids), pol.config, started["version"])
    return decision
