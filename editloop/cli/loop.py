"""`editloop loop pause|resume|status|check`: the automatic loop (trainers/autoloop.py), by hand."""

from __future__ import annotations

import argparse

from editloop.cli.stack import stack_settings
from editloop.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loop", help="the automatic loop: a promoted reward starts a feedback round (and alignment "
                                    "rounds), a served editor gets candidate sets in Label Studio (pause, resume, "
                                    "status, check now)")
    lsub = p.add_subparsers(dest="loop_command", required=True)
    pause = lsub.add_parser("pause", help="start nothing automatically until `editloop loop resume`")
    pause.add_argument("--reason", default="paused by hand", help="kept with the switch and shown by status")
    pause.set_defaults(func=lambda a: _switch(True, a.reason))
    lsub.add_parser("resume", help="let the loop start rounds again").set_defaults(
        func=lambda a: _switch(False, "resumed by hand"))
    lsub.add_parser("status", help="paused or not, the policy, and what the loop would decide now").set_defaults(
        func=_status)
    lsub.add_parser("check", help="decide now and start a round if the policy says so (as beat does)").set_defaults(
        func=_check)


def _switch(paused: bool, reason: str) -> int:
    from editloop.state import open_sessions
    from trainers.autoloop import set_paused

    with open_sessions(Settings()).begin() as s:
        set_paused(s, paused, reason)
    print("the loop is paused: nothing starts automatically" if paused else "the loop is running again")
    return 0


def loop_report(settings: Settings, session) -> dict:
    from trainers.autoloop import decide, loop_state, policy

    pol = policy(settings)
    state = loop_state(session)
    decision = decide(session, pol) if settings.loop_enabled else None
    return {"enabled": settings.loop_enabled, "paused": bool(state and state.paused),
            "reason": state.reason if state else None, "rewards": pol.weights, "stages": pol.stages,
            "steps": settings.loop_feedback_steps,
            "would_start": bool(decision and decision.start),
            "why": decision.reason if decision else "off (EDITLOOP_LOOP_ENABLED=false)",
            "label_sets": label_sets_report(settings, session), "align": align_report(settings, session),
            "instruct_dpo": instruct_dpo_report(settings, session)}


def instruct_dpo_report(settings: Settings, session) -> dict:
    """The instruction editor's DPO leg: its policy and what it would decide now (trainers/instruct_dpo_loop.py)."""
    from trainers.instruct_dpo_loop import decide_instruct_dpo, instruct_dpo_policy

    pol = instruct_dpo_policy(settings)
    decision = decide_instruct_dpo(session, pol) if settings.loop_enabled else None
    return {"labels": pol.labels, "config": pol.config, "would_start": bool(decision and decision.start),
            "why": decision.reason if decision else "off (EDITLOOP_LOOP_ENABLED=false)"}


def align_report(settings: Settings, session) -> dict:
    """The SeedEdit leg: its policy and what it would decide now (trainers/align_loop.py)."""
    from trainers.align_loop import align_policy, decide_align

    pol = align_policy(settings)
    decision = decide_align(session, pol) if settings.loop_enabled else None
    return {"method": pol.method, "rounds": pol.rounds, "config": pol.config, "interval_s": pol.interval_s,
            "would_start": bool(decision and decision.start),
            "why": decision.reason if decision else "off (EDITLOOP_LOOP_ENABLED=false)"}


def label_sets_report(settings: Settings, session) -> dict:
    """The label-sets leg: its policy and what it would decide now (trainers/label_rounds.py)."""
    from dataclasses import asdict

    from trainers.label_rounds import decide_label_sets, label_policy, label_studio_down

    pol = label_policy(settings)
    down = label_studio_down(settings) if pol.sets and settings.loop_enabled else None
    if not settings.loop_enabled:
        start, why = False, "off (EDITLOOP_LOOP_ENABLED=false)"
    elif down:
        start, why = False, f"waiting for Label Studio: {down}"
    else:
        decision = decide_label_sets(session, pol, settings.loop_interval_s)
        start, why = decision.start, decision.reason
    return {**asdict(pol), "would_start": start, "why": why}


def _status(args: argparse.Namespace) -> int:
    from editloop.state import open_sessions

    settings = stack_settings(Settings())
    with open_sessions(settings)() as s:
        r = loop_report(settings, s)
    state = "off" if not r["enabled"] else "paused" if r["paused"] else "on"
    print(f"loop: {state}" + (f" ({r['reason']})" if r["paused"] and r["reason"] else ""))
    print(f"policy: rewards {r['rewards']}, stages {','.join(r['stages'])}, {r['steps']} steps per stage")
    print(f"now: {'would START a round' if r['would_start'] else 'would not start'}: {r['why']}")
    ls = r["label_sets"]
    print(f"label sets: {ls['sets']} of {ls['sets'] * ls['pool']} made per served editor ({ls['selection']} "
          f"selection) + {ls['gold']} gold, overlap {ls['overlap']}; now: "
          f"{'would START a batch' if ls['would_start'] else 'would not start'}: {ls['why']}")
    al = r["align"]
    what = (f"{al['rounds']} alignment rounds per chain" if al["method"] == "rounds" else
            "one instruct GRPO run (EDITLOOP_LOOP_ALIGN_METHOD=grpo)")
    print(f"instruct editor: {what} on a promoted alignment reward, settings {al['config'] or 'default'}; now: "
          f"{'would START' if al['would_start'] else 'would not start'}: {al['why']}")
    dpo = r["instruct_dpo"]
    print(f"instruct DPO: a run per {dpo['labels'] or '(off)'} new instruction-edit labels, settings "
          f"{dpo['config'] or 'default'}; now: {'would START a run' if dpo['would_start'] else 'would not start'}: "
          f"{dpo['why']}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from editloop.state import open_sessions
    from trainers.celery_app import make_celery
    from trainers.loop_legs import check_legs

    settings = stack_settings(Settings())
    legs = check_legs(open_sessions(settings), settings, make_celery(settings), "by hand")
    for name, what in (("feedback", "feedback round"), ("label_sets", "label sets"), ("align", "alignment rounds"),
                       ("instruct_dpo", "instruct DPO run")):
        d = legs[name]
        print(f"{what}: " + ("started: " if d.start else "nothing started: ") + d.reason
              + (f" (runs {', '.join(i[:12] for i in d.run_ids)})" if d.run_ids else ""))
    return 0
