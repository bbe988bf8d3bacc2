"""Prometheus metrics shared by every service process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("editloop_requests_total", "RPCs handled", ["service", "method", "code"])
LATENCY = Histogram("editloop_request_seconds", "RPC latency", ["service", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BATCH_SIZE = Histogram("editloop_batch_size", "items per model call", ["batcher"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
QUEUE_DEPTH = Gauge("editloop_queue_depth", "items waiting for the model", ["batcher"])
