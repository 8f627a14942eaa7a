"""General-purpose tasks on the default queue."""

import logging
from typing import Any

from app.jobs.base import JobTask, job

logger = logging.getLogger("app.jobs.tasks")


@job("app.noop")
def noop(task: JobTask, echo: Any = None) -> dict[str, Any]:
    """Does nothing: measures the queue (bench) and proves a worker is up (tests, readiness)."""
    logger.info("noop ran", extra={"task_id": task.request.id})
    return {"echo": echo}
