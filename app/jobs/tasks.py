"""General-purpose tasks on the default queue."""

from typing import Any

from app.jobs.base import JobTask, job


@job("app.noop")
def noop(task: JobTask, echo: Any = None) -> dict[str, Any]:
    """Does nothing: measures the queue (bench) and proves a worker is up (tests, readiness)."""
    return {"echo": echo}
