"""General-purpose tasks on the default queue."""

import logging
import time
from typing import Any

from app.jobs.base import JobTask, job

logger = logging.getLogger("app.jobs.tasks")
DELAY_STEP_SECONDS = 0.5


@job("app.noop")
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
