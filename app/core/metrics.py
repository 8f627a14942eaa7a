"""Prometheus metrics, correct with several worker processes.

`app api --workers N` sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module, so
each process writes its samples to shared files and `/metrics` in any worker sums them all.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge(
    "http_requests_in_flight", "HTTP requests being answered", multiprocess_mode="livesum"
)
RATE_LIMIT_REJECTIONS = Counter(
    "rate_limit_rejections_total", "Requests refused by a rate limit", ["policy"]
)
RATE_LIMIT_BACKEND_ERRORS = Counter(
    "rate_limit_backend_errors_total",
    "Rate limit checks that could not reach the store",
    ["policy"],
)
# hit, miss (computed and stored), coalesced (waited for a miss of the same entry computing
# meanwhile), or skip (no generation could be read: computed, never stored).
CACHE_LOOKUPS = Counter(
    "cache_lookups_total", "Cached-response lookups by outcome", ["namespace", "result"]
)

SIGNUPS = Counter("user_signups_total", "Accounts created")
# Job gauges are read from the broker and the database by every API process alike; the most
# recent reading of a live process is the truth, not their sum.
JOB_QUEUE_DEPTH = Gauge(
    "jobs_queue_depth",
    "Messages waiting in a job queue",
    ["queue"],
    multiprocess_mode="livemostrecent",
)
JOBS_BY_STATE = Gauge(
    "jobs_by_state", "Jobs per state, from the jobs table", ["state"],
    multiprocess_mode="livemostrecent",
)  # fmt: skip


def render() -> tuple[bytes, str]:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
