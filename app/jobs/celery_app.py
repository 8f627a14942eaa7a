"""The one Celery app: configuration, queues, routes and the beat schedule (JOBS-1, JOBS-9).

`make_celery(settings)` builds it; the API keeps one in `app.state.jobs` to send tasks by
name (it never imports task bodies), and `app worker` / `app beat` run one (app/worker.py,
which adds the domains' task modules). The embedded and
Redis brokers differ only in the URLs and transport options below: the tasks are the same.
"""

from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

from celery import Celery
from celery.schedules import crontab
from kombu.entity import Queue

from app.core.config import Settings
from app.jobs import broker

PUBLISH_TIMEOUT_SECONDS = 2.0
DEFAULT_QUEUE = "default"  # tasks whose area has no route

# Task names are "app.<area>.<action>"; the area picks the queue, so a slow report never
# waits behind a campaign, and workers can be split per queue (`app worker -Q images`).
ROUTES: dict[str, dict[str, str]] = {
    "app.email.*": {"queue": "email"},
    "app.campaigns.*": {"queue": "email"},
    # Before app.images.*: image jobs fetching a URL wait on upstreams, not on the CPU, and
    # get worker slots of their own (issue 13 item 7).
    "app.images.process_url": {"queue": "images_url"},
    "app.images.*": {"queue": "images"},
    "app.reports.*": {"queue": "reports"},
    "app.maintenance.*": {"queue": "maintenance"},
}
# Derived, so a new area edits ROUTES alone: the default queue, then every queue a route names.
QUEUES: tuple[str, ...] = (
    DEFAULT_QUEUE,
    *dict.fromkeys(route["queue"] for route in ROUTES.values()),
)

RECONCILE_TASK = "app.maintenance.reconcile_jobs"


def queue_for(name: str) -> str:
    """The queue ROUTES send a task to (recorded on its job row, to send it again)."""
    for pattern, route in ROUTES.items():
        if fnmatchcase(name, pattern):
            return route["queue"]
    return "default"


# What beat sends, and when (UTC). The heartbeat's interval is a setting: see make_celery.
BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "purge-sessions": {"task": "app.maintenance.purge_sessions", "schedule": crontab(minute=7)},
    "purge-files": {
        "task": "app.maintenance.purge_files",
        "schedule": crontab(hour=3, minute=17),
    },
    "purge-jobs": {"task": "app.maintenance.purge_jobs", "schedule": crontab(hour=3, minute=47)},
    # Expired order Idempotency-Keys (ORDER_IDEMPOTENCY_TTL_SECONDS, a day by default).
    "purge-order-keys": {
        "task": "app.maintenance.purge_order_keys",
        "schedule": crontab(minute=37),
    },
    "daily-report": {"task": "app.reports.daily", "schedule": crontab(hour=0, minute=30)},
    # Mail whose enqueue was lost, or whose sender died, goes out within minutes.
    "email-sweep-outbox": {"task": "app.email.sweep_outbox", "schedule": 120.0},
}


def _heartbeat_entry(settings: Settings) -> dict[str, Any]:
    interval = settings.heartbeat_interval_seconds
    # A heartbeat not delivered within one interval says nothing any more: expire it, so a
    # worker coming back after an outage doesn't chew through a backlog of them.
    return {
        "task": "app.maintenance.heartbeat",
        "schedule": timedelta(seconds=interval),
        "options": {"expires": interval},
    }


def _reconcile_entry(settings: Settings) -> dict[str, Any]:
    interval = settings.job_reconcile_interval_seconds
    return {
        "task": RECONCILE_TASK,
        "schedule": timedelta(seconds=interval),
        "options": {"expires": interval},  # the next one is as good as a late one
    }


class AppCelery(Celery):
    settings: Settings


def make_celery(settings: Settings) -> AppCelery:
    broker.register()
    celery = AppCelery("app", set_as_current=False)
    celery.settings = settings
    transport_options: dict[str, Any] = (
        {"polling_interval": settings.celery_embedded_poll_seconds}
        if settings.embedded_broker
        # A message not acknowledged in time goes back to the queue; late acks make that the
        # re-queue on a lost worker, so it must outlast the longest task.
        else {"visibility_timeout": settings.celery_visibility_timeout_seconds}
    )
    celery.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend_url,
        broker_transport_options=transport_options,
        # Sending a task subscribes to its result on a Redis backend; with Redis down, kombu's
        # default (20 retries a second apart) would hold the request for 20 s before the 503.
        result_backend_transport_options={
            **transport_options,
            "retry_policy": {"timeout": PUBLISH_TIMEOUT_SECONDS},
        },
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        broker_connection_retry_on_startup=True,
        # The database result backend shares SQLite's locking with the pool processes.
        database_engine_options={"connect_args": {"timeout": 30}},
        database_create_tables_at_setup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue=DEFAULT_QUEUE,
        task_routes=ROUTES,
        # Nothing in the app reads Celery's results (the task API reads the `jobs` table), so
        # none are written unless CELERY_RESULT_BACKEND asks: with Redis as the result store,
        # a Redis restart while a task ran turned its finished work into a FAILURE.
        task_ignore_result=settings.result_backend_url is None,
        task_track_started=settings.result_backend_url is not None,
        # A task is acknowledged when it ends, not when it starts, and a pool process that
        # dies mid-task puts its message back: nothing is lost to a crash (tasks are
        # idempotent for that reason).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A running task outlives a broker restart and its late ack reaches the restarted
        # Redis (its append-only file kept the message unacked): no cancel and re-run needed
        # (tests/jobs/test_outages.py). Pinned: Celery 6 turns cancelling on by default.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_prefetch_multiplier=1,  # one message per process: no task waits behind another
        task_soft_time_limit=settings.job_soft_time_limit_seconds,
        task_time_limit=settings.job_time_limit_seconds,
        result_expires=timedelta(seconds=settings.celery_result_expires_seconds),
        result_extended=True,
        worker_concurrency=settings.celery_worker_concurrency,
        worker_max_tasks_per_child=settings.celery_worker_max_tasks_per_child,
        # A result write failing on a connection error (a restarting Redis or database) is
        # retried instead of failing a task that did its work.
        result_backend_always_retry=settings.celery_result_backend_max_retries > 0,
        result_backend_max_retries=settings.celery_result_backend_max_retries,
        worker_hijack_root_logger=False,  # our structlog setup stays in charge
        worker_send_task_events=False,
        # Remote control (revoke, inspect) needs broadcast, which the SQLite broker lacks.
        worker_enable_remote_control=not settings.embedded_broker,
        beat_schedule={
            **BEAT_SCHEDULE,
            "heartbeat": _heartbeat_entry(settings),
            "reconcile-jobs": _reconcile_entry(settings),
        },
        beat_schedule_filename=str(settings.app_data_dir / "celerybeat-schedule"),
    )
    return celery
