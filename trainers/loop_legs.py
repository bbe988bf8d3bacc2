"""Every leg of the loop checked at once, as the beat's CHECK_LOOP task and `editloop loop check` do: feedback
rounds (trainers/autoloop.py), label batches (label_rounds.py), alignment rounds (align_loop.py) and DPO runs of
the instruction editor (instruct_dpo_loop.py); each decides under the loop's lock and records before it sends."""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from editloop import queue
from editloop.settings import Settings
from trainers.autoloop import LoopDecision

LEGS = ("feedback", "label_sets", "align", "instruct_dpo")


def check_legs(sessions: sessionmaker[Session], settings: Settings, app: Celery, source: str
               ) -> dict[str, LoopDecision]:
    """Each leg's decision by name (LEGS), its runs sent through `app` when it started."""
    from trainers.align_loop import check_align
    from trainers.autoloop import check_loop
    from trainers.chains import add_feedback_rows, send_align_chain, send_feedback_chain, send_instruct_tuning
    from trainers.instruct_dpo_loop import check_instruct_dpo
    from trainers.label_rounds import check_label_sets

    return {
        "feedback": check_loop(sessions, settings, add_feedback_rows,
                               lambda stages, ids, config: send_feedback_chain(app, stages, ids, config), source),
        "label_sets": check_label_sets(sessions, settings, lambda run_id: app.send_task(
            queue.MAKE_LABEL_SETS, args=queue.MakeLabelSets(run_id).args(), task_id=run_id), source),
        "align": check_align(sessions, settings,
                             lambda ids, config, start: send_align_chain(app, ids, config, start), source,
                             lambda run_id, config, start: send_instruct_tuning(app, run_id, config, start)),
        "instruct_dpo": check_instruct_dpo(sessions, settings, lambda run_id, config, start: send_instruct_tuning(
            app, run_id, config, start), source),
    }
