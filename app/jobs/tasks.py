"""The job machinery's own tasks: the no-op probe, the heartbeat and job-row housekeeping."""

import logging
import os
import socket
import time
from datetime import timedelta
from typing import Any

from app.core.db import utcnow
from app.jobs import heartbeat as heartbeats
from app.jobs import reconcile, service
from app.jobs.base import JobTask, job
from app.jobs.celery_app import RECONCILE_TASK

logger = logging.getLogger("app.jobs.tasks")
DELAY_STEP_SECONDS = 0.5


@job("app.noop", title="Test task")
def noop(task: JobTask, echo: Any = None, delay: float = 0) -> dict[str, Any]:
    """Does nothing: measures the queue (bench) and proves a worker is up (tests, readiness).

    With `delay`, it holds its worker that long, recording progress every half second: a job
    that is running while tests restart the database or Redis under it."""
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        task.progress(int(delay - left), int(delay) or 1, "waiting")
        time.sleep(min(DELAY_STEP_SECONDS, left))  # the task's whole purpose is to take time
    logger.info("noop ran", extra={"task_id": task.request.id})
    return {"echo": echo}


# Untracked: one every HEARTBEAT_INTERVAL_SECONDS would flood the jobs table.
@job("app.maintenance.heartbeat", tracked=False)
def heartbeat(task: JobTask) -> None:
    source = f"{socket.gethostname()}:{os.getpid()}"
    task.in_session(lambda session: heartbeats.record(session, source))


@job("app.maintenance.purge_jobs", title="Job history purge")
def purge_jobs(task: JobTask) -> dict[str, Any]:
    """Job rows finished before the retention cutoff (JOBS-6); idempotent, like all
    maintenance: a re-delivery deletes nothing more."""
    cutoff = utcnow() - timedelta(days=task.runtime.settings.job_retention_days)
    jobs = task.in_session(
        lambda session: service.purge_finished(session=session, finished_before=cutoff)
    )
    logger.info("purged %d finished jobs", jobs)
    return {"jobs": jobs}


# Untracked: it runs every JOB_RECONCILE_INTERVAL_SECONDS, and its own row would be one more
# open job for it to look at.
@job(RECONCILE_TASK, tracked=False)
def reconcile_jobs(task: JobTask) -> dict[str, Any]:
    """Jobs whose message the broker lost, or whose worker died holding it: sent again, or
    failed with a reason their owner sees (app/jobs/reconcile.py). Safe to run twice at once."""
    return reconcile.reconcile(task)
