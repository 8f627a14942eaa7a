"""The Celery app for Celery's own command line: `celery -A app.worker worker|beat|inspect|events`
and Flower (`celery -A app.worker flower`).

`app worker` and `app beat` run this same app, so both ways share everything: the settings
from the environment, our logging (Celery's `setup_logging` signal), the task modules, the
liveness file (a consumer bootstep and beat's scheduler, app/jobs/liveness.py).
It is the worker's composition root: the one list of task modules is here.

With the embedded (SQLite) broker a worker must be the only one on it and must first re-queue
what a dead worker left invisible (app/jobs/broker.py). A `worker_init` handler does both for
any worker started from this app, stock CLI included: it takes the broker's lock for the life
of the process and re-queues; if another worker holds the lock it says so on stderr and exits
with status 2 before consuming anything.
"""

import atexit
import logging
import sys
from contextlib import ExitStack
from typing import Any

from celery import signals

from app import models  # noqa: F401 - every table, for foreign keys between domains
from app.core import gc_tuning
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.jobs import liveness, runtime
from app.jobs.broker import BrokerBusy, requeue_invisible, worker_lock
from app.jobs.celery_app import RECONCILE_TASK, AppCelery, make_celery
from app.realtime.service import NotificationService

# Each domain's task bodies, imported by workers only (the API sends tasks by name). A domain
# with background work adds its `tasks` module here, and nowhere else.
TASK_MODULES = [
    "app.jobs.tasks",
    "app.auth.tasks",
    "app.files.tasks",
    "app.images.tasks",
    "app.reports.tasks",
    "app.email.tasks",
    "app.campaigns.tasks",
    "app.orders.tasks",
]


def create_worker_celery(settings: Settings) -> AppCelery:
    celery = make_celery(settings)
    celery.conf.include = TASK_MODULES
    celery.conf.beat_scheduler = f"{liveness.__name__}:AppScheduler"
    celery.steps["consumer"].add(liveness.ConsumerLiveness)
    return celery


celery = create_worker_celery(get_settings())
# What the machinery can't import from below: task owners are notified through realtime.
runtime.use_notifier(NotificationService)

_held = ExitStack()  # the embedded broker's lock, for as long as this worker process lives
atexit.register(_held.close)


def _setup_logging(**_: Any) -> None:
    """A receiver here keeps Celery from configuring logging itself (worker and beat)."""
    configure_logging(celery.settings)


def _claim_embedded_broker(sender: Any = None, **_: Any) -> None:
    settings = celery.settings
    if sender is None or sender.app is not celery or not settings.embedded_broker:
        return
    try:
        _held.enter_context(worker_lock(settings.embedded_broker_path))
    except BrokerBusy as exc:
        print(f"Refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    requeued = requeue_invisible(settings.embedded_broker_path)
    if requeued:
        print(f"Re-queued {requeued} message(s) left by a stopped worker.", file=sys.stderr)


def _reconcile_on_start(sender: Any = None, **_: Any) -> None:
    """A worker coming back after a crash (or after Redis lost its data) looks for jobs lost
    meanwhile at once, not at beat's next run: a dead worker's own job is put back now."""
    if sender is None or sender.app is not celery:
        return
    try:
        celery.send_task(RECONCILE_TASK)
    except Exception:  # the periodic run will do it; a worker must start regardless
        logging.getLogger("app.jobs.reconcile").warning(
            "could not send the job reconciler at start", exc_info=True
        )


def _tune_gc(**_: Any) -> None:
    """In the main process once it is set up (a prefork parent: before it forks, so the
    children share its frozen pages) and in each pool child once it has started."""
    gc_tuning.freeze_after_startup(celery.settings)


signals.setup_logging.connect(_setup_logging)
signals.worker_init.connect(_tune_gc)
signals.worker_process_init.connect(_tune_gc)
signals.worker_init.connect(_claim_embedded_broker)
signals.worker_ready.connect(_reconcile_on_start)
