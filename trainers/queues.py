"""How many messages wait in a queue of the broker (RabbitMQ, Redis or the embedded SQLAlchemy transport)."""

from __future__ import annotations

from kombu import Connection

QUEUES = ("gpu", "cpu")


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages waiting in `queue` (0 when it was never declared: nothing was sent to it and no worker listened).
    Raises the transport's error when the broker cannot be reached."""
    with Connection(broker_url, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)
        try:
            return conn.channel().queue_declare(queue=queue, passive=True).message_count
        except conn.channel_errors:
            return 0
