"""The loop that turns by itself: a newly promoted reward version starts a feedback round.

`check_loop` runs on the beat schedule and after every reward run that promoted a version. Under a lock (two
checks at once start one round) it decides, records the round's queued runs with their trigger, and only then
sends the chain:
- paused (`editloop loop pause`): nothing starts; `editloop loop resume` turns it on again;
- every reward the policy names (`loop_rewards`, with weights) must have a promoted version that beat chance on
  its held-out set (a one-sided exact sign test at `loop_floor_alpha`): a bad first reward never drives the loop;
- debounce: no new round while a feedback run is queued or running;
- a round starts when one of those rewards was promoted after the newest feedback round was queued (or none
  ever was). The round is the chain `loop_stages` with `loop_feedback_steps` steps per stage and the measured
  KL trust region (`loop_kl_weight`); each stage is gated and promoted as by hand, and the editor service
  hot-reloads a promoted stage. A failing stage stops its chain (the rest are cancelled, with the reason).
Everything it does can still be done by hand (`editloop train pefl ...`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import LoopState, ModelVersion, TrainingRun, as_utc
from editloop.registry import floor_failure
from editloop.settings import Settings
from trainers.feedback.loop import PREFERENCE_REWARDS, STAGES, parse_reward_weights

LOOP = "feedback"
_PG_LOOP_LOCK = 0x6C6F_6F70  # "loop"


@dataclass(frozen=True)
class LoopDecision:
    """What one of the loop's legs decided (feedback rounds here, label sets, alignment rounds)."""

    start: bool
    reason: str
    run_ids: tuple[str, ...] = ()

    @property
    def run_id(self) -> str | None:
        return self.run_ids[0] if self.run_ids else None


@dataclass(frozen=True)
class LoopPolicy:
    weights: dict[str, float]
    stages: list[str]
    config: dict
    floor_alpha: float = 0.05


def below_floor(row: ModelVersion, alpha: float) -> str | None:
    """Why a promoted reward version may not drive the loop (it did not beat chance surely enough), else None."""
    if alpha >= 1:
        return None
    if not (row.metrics or {}).get("floor"):
        return (f"{row.kind} reward {row.version} has no chance-floor record (promoted by hand or before floors "
                f"existed); retrain it, or set EDITLOOP_LOOP_FLOOR_ALPHA=1 to drive the loop with it anyway")
    why = floor_failure(row.metrics, alpha, "EDITLOOP_LOOP_FLOOR_ALPHA")
    return f"{row.kind} reward {row.version}: {why}; it will not drive the loop" if why else None


def policy(settings: Settings) -> LoopPolicy:
    """The policy from settings; ValueError naming the setting and the valid values."""
    weights = parse_reward_weights(settings.loop_rewards, "EDITLOOP_LOOP_REWARDS")
    stages = [x.strip() for x in settings.loop_stages.split(",") if x.strip()]
    if not stages or (stages != list(STAGES[:len(stages)]) and stages not in (["dpo"], ["grpo"])):
        raise ValueError(f"`EDITLOOP_LOOP_STAGES` must be a prefix of {','.join(STAGES)} (e.g. pefl or "
                         f"pefl,adversarial), dpo (Diffusion-DPO from the labels) or grpo (online GRPO scored by the "
                         f"reward services), got {settings.loop_stages!r}")
    for name in ("loop_feedback_steps", "loop_batch_size", "loop_eval_examples"):
        if getattr(settings, name) < 1:
            raise ValueError(f"`EDITLOOP_{name.upper()}` must be >= 1, got {getattr(settings, name)}")
    if not 0 < settings.loop_feedback_lr <= 1:
        raise ValueError(f"`EDITLOOP_LOOP_FEEDBACK_LR` must be in (0, 1], got {settings.loop_feedback_lr}")
    config = {"steps": settings.loop_feedback_steps, "batch_size": settings.loop_batch_size,
              "lr": settings.loop_feedback_lr,
              "reward_weights": weights, "kl_weight": settings.loop_kl_weight,
              "eval": {"examples": settings.loop_eval_examples, "success_tolerance": settings.loop_success_tolerance}}
    if stages == ["grpo"]:  # the preference rewards it is not weighted on are its held-out guards; its KL is its own
        config.update(grpo={"guard": [k for k in PREFERENCE_REWARDS if k not in weights]}, kl_weight=0.0)
    if not 0 <= settings.loop_success_tolerance <= 1:
        raise ValueError(f"`EDITLOOP_LOOP_SUCCESS_TOLERANCE` must be in [0, 1], got {settings.loop_success_tolerance}")
    if not 0 < settings.loop_floor_alpha <= 1:
        raise ValueError(f"`EDITLOOP_LOOP_FLOOR_ALPHA` must be in (0, 1], got {settings.loop_floor_alpha}")
    return LoopPolicy(weights, stages, config, settings.loop_floor_alpha)


def loop_state(session: Session) -> LoopState | None:
    return session.get(LoopState, LOOP)


def set_paused(session: Session, paused: bool, reason: str) -> LoopState:
    state = loop_state(session)
    if state is None:
        state = LoopState(name=LOOP)
        session.add(state)
    state.paused, state.reason, state.updated_at = paused, reason, datetime.now(UTC)
    return state



def json_setting(name: str, text: str, what: str, check: Callable[[dict], object]) -> dict:
    """A setting holding a JSON object of `what` (e.g. "round settings"), parsed and `check`ed; ValueError naming
    setting `name` (e.g. EDITLOOP_LOOP_ALIGN_CONFIG) and what is wrong with it."""
    import json

    try:
        config = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"`{name}` must be a JSON object of {what}: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"`{name}` must be a JSON object, got {text!r}")
    try:
        check(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}`: {exc}") from exc
    return config


def held_back(session: Session, newest: TrainingRun | None, what: str) -> str | None:
    """Why a leg starts nothing now whatever else holds: the loop is paused, or the leg's newest run (`what`) is
    still queued or running (debounce)."""
    state = loop_state(session)
    if state is not None and state.paused:
        return f"paused ({state.reason or 'by hand'}); `editloop loop resume` turns it on"
    if newest is not None and newest.status in ("queued", "running"):
        return f"debounced: {what} {newest.id[:12]} is {newest.status}"
    return None


def decide(session: Session, pol: LoopPolicy) -> LoopDecision:
    last = session.scalars(select(TrainingRun).where(TrainingRun.kind.like("feedback-%"))
                           .order_by(TrainingRun.created_at.desc())).first()
    if why := held_back(session, last, "feedback run"):
        return LoopDecision(False, why)
    rewards = {}
    for kind in pol.weights:
        row = session.scalars(select(ModelVersion).where(ModelVersion.kind == kind,
                                                         ModelVersion.status == "promoted")).first()
        if row is None:
            return LoopDecision(False, f"waiting for a promoted {kind} reward (the policy names "
                                       f"{', '.join(pol.weights)})")
        why = below_floor(row, pol.floor_alpha)
        if why:
            return LoopDecision(False, why)
        rewards[kind] = row
    newest = max(rewards.values(), key=lambda r: as_utc(r.promoted_at or r.created_at))
    promoted_at = as_utc(newest.promoted_at or newest.created_at)
    if last is not None and as_utc(last.created_at) >= promoted_at:
        return LoopDecision(False, f"no reward promoted since the last feedback round ({last.id[:12]}, "
                                   f"{last.status})")
    return LoopDecision(True, f"{newest.kind} reward {newest.version} promoted")


def hold_loop_lock(session: Session) -> None:
    """The loop's lock until the transaction ends, so two checks cannot both decide to start."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOOP_LOCK})
    else:  # SQLite: take the write lock now
        session.execute(text("UPDATE training_runs SET id = id WHERE 1 = 0"))


def decide_and_record(sessions: sessionmaker[Session], decide_now: Callable[[Session], LoopDecision],
                      record: Callable[[Session, str], list[str]], source: str) -> LoopDecision:
    """One leg's decision under the loop's lock (two checks at once start one run); a starting leg's rows are
    recorded with their trigger and committed here, before the caller sends anything."""
    with sessions.begin() as session:
        hold_loop_lock(session)
        decision = decide_now(session)
        if not decision.start:
            return decision
        run_ids = record(session, f"loop ({source}): {decision.reason}")
    return LoopDecision(True, decision.reason, tuple(run_ids))


def check_loop(sessions: sessionmaker[Session], settings: Settings,
               add_rows: Callable[[Session, list[str], dict, str], list[str]],
               send: Callable[[list[str], list[str], dict], None], source: str = "schedule") -> LoopDecision:
    """Decide under a lock; a starting round's rows are committed (with their trigger) before the chain is sent."""
    pol = policy(settings)
    if not settings.loop_enabled:
        return LoopDecision(False, "off (EDITLOOP_LOOP_ENABLED=false)")
    decision = decide_and_record(sessions, lambda s: decide(s, pol),
                                 lambda s, trigger: add_rows(s, pol.stages, pol.config, trigger), source)
    if decision.start:
        send(pol.stages, list(decision.run_ids), pol.config)
    return decision
