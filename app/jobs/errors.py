"""The job machinery's errors: what the API answers about jobs, and the exceptions a task
raises on purpose (their messages are shown to the task's owner)."""

from app.core.errors import NotFound, ServiceUnavailable


class TaskNotFound(NotFound):
    """Also the answer for someone else's job: its existence is not disclosed."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Task {job_id} not found")


class QueueUnavailable(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("The job queue is unavailable; try again later.")


class JobError(Exception):
    """A failure the owner may read about (bad input, unreachable source). Anything else is
    reported as an internal error, with the details only in the worker's log."""


class Cancelled(Exception):
    """The owner cancelled the task; raised at the task's next checkpoint."""
