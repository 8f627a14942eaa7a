"""Outages that pass: the database or Redis restarting under a running task (JOBS resilience).

Two policies, one place:
- `record(runtime, attempt, what)`: a job's state write (start, progress, end) is retried with
  backoff for up to JOB_STATE_RETRY_SECONDS, so a restart of a few seconds loses nothing and
  no row is left STARTED forever.
- `retry_if_transient(task, exc)`: a task body that failed on such an outage runs again later
  (Celery retry with backoff, at most JOB_TRANSIENT_MAX_RETRIES times): tasks are idempotent.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.errors import database_unavailable
from app.jobs.errors import Cancelled, JobError

if TYPE_CHECKING:
    from celery import Task

    from app.jobs.runtime import WorkerRuntime

logger = logging.getLogger("app.jobs")
T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 5.0  # between state-write attempts: a restart is noticed within seconds
MAX_TASK_COUNTDOWN_SECONDS = 60.0
# Outcomes a task chose (retry, cancel, a safe error, a time limit): never re-run for them,
# even when an outage error is somewhere in their chain.
_DECIDED = (Retry, Ignore, Reject, Cancelled, JobError, SoftTimeLimitExceeded)
_BROKER_ERRORS = (RedisConnectionError, RedisTimeoutError, KombuOperationalError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Is this the database or the broker being away for a moment, rather than a bug?"""
    if isinstance(exc, _DECIDED):
        return False
    if database_unavailable(exc):
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _BROKER_ERRORS):
            return True
        current = current.__cause__ or current.__context__
    return False


async def with_retries(attempt: Callable[[], Awaitable[T]], *, within: float, what: str) -> T:
    """`attempt()` until it succeeds, retrying transient errors until `within` seconds pass.
    Each try is a fresh coroutine (and so a fresh session): a failed one is never reused."""
    deadline = time.monotonic() + within
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            return await attempt()
        except Exception as exc:
            left = deadline - time.monotonic()
            if left <= 0 or not is_transient(exc):
                raise
            logger.warning("%s: %s; retrying in %.2fs", what, _brief(exc), min(delay, left))
            await asyncio.sleep(min(delay, left))  # backoff between attempts, bounded above
            delay = min(delay * 2, MAX_DELAY_SECONDS)


def record(runtime: "WorkerRuntime", attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a job-state write on the worker's loop, riding out a database restart."""
    within = runtime.settings.job_state_retry_seconds
    return runtime.run(with_retries(attempt, within=within, what=what))


def retry_if_transient(task: "Task", exc: BaseException) -> None:
    """Raise Celery's Retry if `exc` is an outage and retries are left; else return."""
    if not is_transient(exc):
        return
    retries: int = task.request.retries or 0
    if retries >= task.app.settings.job_transient_max_retries:
        return
    countdown = min(2.0**retries, MAX_TASK_COUNTDOWN_SECONDS)
    logger.warning(
        "task %s[%s] hit an outage (%s); running it again in %.0fs",
        task.name, task.request.id, _brief(exc), countdown,
    )  # fmt: skip
    # Celery's own bound (the task's max_retries, 3 unless it says otherwise) applies too.
    raise task.retry(exc=exc, countdown=countdown)


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
