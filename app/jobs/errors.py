"""The job machinery's errors: what the API answers about jobs (a missing task, the queue
down, one job too many), and the exceptions a task raises on purpose (their messages are shown
to the task's owner)."""

from app.core.errors import AppError, ErrorDetail, NotFound, ServiceUnavailable


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


class TooManyJobs(AppError):
    """429: the owner has as many jobs queued or running as allowed; one must finish first."""

    status, code = 429, "too_many_active_jobs"

    def __init__(self, what: str, limit: int, setting: str, retry_after: int) -> None:
        super().__init__(
            f"You have {limit} {what} queued or running, the most allowed ({setting}); "
            f"try again when one has finished (Retry-After: {retry_after} s).",
            details=[
                ErrorDetail(field="limit", message=str(limit), type="quota"),
                ErrorDetail(field="retry_after", message=str(retry_after), type="quota"),
            ],
            headers={"Retry-After": str(retry_after)},
        )
