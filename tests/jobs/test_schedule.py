"""The beat schedule names only tasks a worker has, on the queues their names route to."""

import importlib
from pathlib import Path

from app.jobs.celery_app import queue_for
from app.worker import TASK_MODULES, create_worker_celery
from tests.support.settings import make_settings


def test_every_scheduled_task_exists_and_routes_off_the_default_queue(tmp_path: Path) -> None:
    celery = create_worker_celery(make_settings(tmp_path))
    for module in TASK_MODULES:
        importlib.import_module(module)  # registers the bodies, as `app worker` does
    celery.loader.import_default_modules()
    schedule = celery.conf.beat_schedule
    assert {
        "heartbeat", "purge-sessions", "purge-files", "purge-jobs", "daily-report",
        "reconcile-jobs", "purge-order-keys",
    } <= set(schedule)  # fmt: skip
    router = celery.amqp.router  # the routing send_task applies
    for entry in schedule.values():
        assert entry["task"] in celery.tasks, entry["task"]
        queue = router.route({}, entry["task"])["queue"].name
        assert queue != "default", (entry["task"], queue)
    reconcile = schedule["reconcile-jobs"]
    assert reconcile["schedule"].total_seconds() == celery.settings.job_reconcile_interval_seconds


def test_the_queue_a_job_row_records_is_the_one_its_task_is_routed_to(tmp_path: Path) -> None:
    """The reconciler sends a lost job again to the queue on its row (`queue_for`)."""
    celery = create_worker_celery(make_settings(tmp_path))
    for module in TASK_MODULES:
        importlib.import_module(module)
    router = celery.amqp.router
    names = [name for name in celery.tasks if name.startswith("app.")]
    assert names
    for name in names:
        assert queue_for(name) == router.route({}, name)["queue"].name, name
