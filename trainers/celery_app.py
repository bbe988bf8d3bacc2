"""The Celery app: broker and backend from settings, acks_late, prefetch 1, gpu and cpu queues.

    celery -A trainers.celery_app worker -Q gpu,cpu --pool solo
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from editloop import queue
from editloop.settings import Settings, load_settings


def make_celery(settings: Settings) -> Celery:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("editloop", broker=settings.resolved_broker_url(), backend=settings.resolved_result_backend(),
                 include=["trainers.tasks"])
    app.conf.update(
        task_acks_late=True,  # a worker that dies mid-task leaves the message for the next one
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue="cpu",
        task_queues=[Queue("gpu"), Queue("cpu")],
        task_routes={"editloop.gpu.*": {"queue": "gpu"}, "editloop.cpu.*": {"queue": "cpu"}},
        broker_connection_retry_on_startup=True,
        result_extended=True,
        beat_schedule={
            "check-retraining-triggers": {"task": queue.CHECK_TRIGGERS,
                                          "schedule": settings.trigger_interval_s},
            # webhook events whose enqueue was lost are applied within a minute anyway
            "apply-pending-label-events": {"task": queue.APPLY_LABEL_EVENTS, "schedule": 60.0},
            # runs whose worker died for good or whose message was lost: re-queued from the checkpoint, or failed
            "reap-hung-runs": {"task": queue.REAP_RUNS, "schedule": settings.run_reap_interval_s},
            # the automatic loop: a newly promoted reward starts a feedback round (unless paused)
            "check-the-loop": {"task": queue.CHECK_LOOP, "schedule": settings.loop_interval_s},
        },
    )
    return app


app = make_celery(load_settings())
