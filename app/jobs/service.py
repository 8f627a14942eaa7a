"""Jobs: enqueue after the commit, keep each job's row current, and show it to its owner."""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import anyio
from celery import Celery
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import utcnow
from app.core.request_context import REQUEST_ID
from app.core.user_locks import lock_user
from app.jobs.celery_app import queue_for
from app.jobs.errors import QueueUnavailable, TaskNotFound, TooManyJobs
from app.jobs.models import ACTIVE, FINISHED, Job, JobState

logger = logging.getLogger("app.jobs")
# What the owner reads when the reconciler gives a lost job up (app/jobs/reconcile.py).
LOST_ERROR = "The task was lost when the job queue restarted; submit it again."
LOCK_SCOPE = "jobs"


@dataclass(frozen=True, slots=True)
class NameCap:
    """A tighter cap for one kind of job (by task name), on top of USER_MAX_ACTIVE_JOBS."""

    limit: int
    setting: str  # named in the 429, so an operator knows what to raise
    what: str  # "image jobs from a URL"


@dataclass(frozen=True)
class Jobs:
    """Sends tasks. The same object serves the API (app.state.jobs) and the worker."""

    celery: Celery
    # USER_MAX_ACTIVE_JOBS; None: no cap (tests of the machinery, internal senders).
    max_active_per_owner: int | None = None
    retry_after_seconds: int = 5

    async def enqueue(
        self,
        session: AsyncSession,
        name: str,
        *args: Any,
        owner_id: int | None = None,
        countdown: float | None = None,
        capped: bool = True,
        name_cap: NameCap | None = None,
    ) -> Job:
        """Record the job, commit it with whatever else the session holds, then send it.

        Sending after the commit means a worker never sees an ID whose rows are not there
        yet. If the broker is down the job is marked failed and the caller gets a 503: the
        committed work stays, and anything that must still happen (an outbox row) is found
        again by the maintenance sweep.

        With an owner and `capped`, the owner's active jobs are counted under their lock and
        one past USER_MAX_ACTIVE_JOBS (or past `name_cap` jobs of this name) is a
        429. Uncapped jobs (what the service starts itself, like an upload's variants) still
        count against the cap.
        """
        if owner_id is not None and capped:
            await self._check_active(session, owner_id, name, name_cap)
        job = Job(
            id=str(uuid.uuid4()), name=name, owner_id=owner_id, state=JobState.PENDING,
            args=list(args), kwargs={}, queue=queue_for(name),
        )  # fmt: skip
        session.add(job)
        await session.commit()
        try:
            await self.send(name, *args, task_id=job.id, countdown=countdown)
        except Exception as exc:
            logger.exception("could not queue task %s", name, extra={"task_id": job.id})
            job.state, job.error, job.finished_at = (
                JobState.FAILURE, "The task could not be queued.", utcnow()
            )  # fmt: skip
            await session.commit()
            raise QueueUnavailable() from exc
        return job

    async def _check_active(
        self, session: AsyncSession, owner_id: int, name: str, name_cap: NameCap | None
    ) -> None:
        # Held until the commit that inserts the row: a racing submission counts this one.
        await lock_user(session=session, user_id=owner_id, scope=LOCK_SCOPE)
        active = (Job.owner_id == owner_id, Job.state.in_(ACTIVE))
        limits: list[tuple[int, str, str, ColumnElement[bool] | None]] = []
        if name_cap is not None:
            cap = (name_cap.limit, name_cap.what, name_cap.setting, Job.name == name)
            limits.append(cap)
        if self.max_active_per_owner is not None:
            limits.append((self.max_active_per_owner, "jobs", "USER_MAX_ACTIVE_JOBS", None))
        for limit, what, setting, extra in limits:
            where = [*active, extra] if extra is not None else list(active)
            count = (
                await session.execute(select(func.count()).select_from(Job).where(*where))
            ).scalar_one()
            if count >= limit:
                await session.rollback()
                raise TooManyJobs(what, limit, setting, self.retry_after_seconds)

    async def send(
        self, name: str, *args: Any, task_id: str | None = None, countdown: float | None = None
    ) -> str:
        """Send without a row (internal work). Publishing blocks on I/O: off the event loop."""
        task_id = task_id or str(uuid.uuid4())
        send = partial(
            self.celery.send_task,
            name,
            args=list(args),
            task_id=task_id,
            countdown=countdown,
            headers={"request_id": REQUEST_ID.get()},
        )
        await anyio.to_thread.run_sync(send)
        return task_id


# -- read by the API -------------------------------------------------------------------------


async def get_visible(*, session: AsyncSession, job_id: str, user_id: int, is_admin: bool) -> Job:
    """The job, if the caller owns it or is an admin; anyone else is told it does not exist."""
    job = await session.get(Job, job_id)
    if job is None or not (is_admin or job.owner_id == user_id):
        raise TaskNotFound(job_id)
    return job


async def list_owned(
    *, session: AsyncSession, owner_id: int, offset: int, limit: int, name: str | None = None
) -> tuple[Sequence[Job], int]:
    where = [Job.owner_id == owner_id]
    if name is not None:
        where.append(Job.name == name)
    return await list_jobs(session=session, where=where, offset=offset, limit=limit)


async def list_jobs(
    *, session: AsyncSession, where: Sequence[ColumnElement[bool]], offset: int, limit: int
) -> tuple[Sequence[Job], int]:
    """A page of jobs matching `where`, newest first, and how many match in all."""
    total = (
        await session.execute(select(func.count()).select_from(Job).where(*where))
    ).scalar_one()
    rows = await session.execute(
        select(Job)
        .where(*where)
        .order_by(Job.created_at.desc(), Job.id)
        .offset(offset)
        .limit(limit)
    )
    return rows.scalars().all(), total


async def request_cancel(*, session: AsyncSession, job: Job) -> Job:
    """Cancel: a job not started yet never runs; a running one stops at its next checkpoint."""
    if job.state in FINISHED:
        return job
    job.cancel_requested = True
    if job.state == JobState.PENDING:
        job.state, job.finished_at, job.error = JobState.REVOKED, utcnow(), "Cancelled."
    await session.commit()
    return job


# -- written by the worker -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a worker knows of the message it runs: recorded so the job can be sent again."""

    worker: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    queue: str | None = None


async def mark_started(
    *,
    session: AsyncSession,
    job_id: str,
    name: str,
    owner_id: int | None,
    delivery: Delivery | None = None,
) -> bool:
    """STARTED, creating the row for tasks sent without one (beat). False: it was cancelled,
    or the reconciler gave it up (a stray copy of its message must not run it after all)."""
    delivery = delivery or Delivery()
    job = await session.get(Job, job_id, with_for_update=True)
    if job is None:
        # Column defaults apply at flush; the counters below are read before that.
        job = Job(id=job_id, name=name, owner_id=owner_id, attempts=0, cancel_requested=False,
                  requeues=0)  # fmt: skip
        session.add(job)
    if job.state == JobState.FAILURE and job.error == LOST_ERROR:
        return False
    if job.args is None and delivery.args is not None:
        job.args, job.kwargs = delivery.args, delivery.kwargs or {}
        job.queue = job.queue or delivery.queue
    job.worker = delivery.worker
    if job.cancel_requested:
        job.state = JobState.REVOKED
        job.finished_at = job.finished_at or utcnow()
        await session.commit()
        return False
    job.state, job.started_at, job.attempts = JobState.STARTED, utcnow(), job.attempts + 1
    job.error = None
    await session.commit()
    return True


async def mark_progress(*, session: AsyncSession, job_id: str, progress: dict[str, Any]) -> bool:
    """Record progress; returns whether the owner asked to cancel meanwhile."""
    await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_([JobState.STARTED, JobState.PROGRESS]))
        .values(state=JobState.PROGRESS, progress=progress)
    )
    cancel = (await session.execute(select(Job.cancel_requested).where(Job.id == job_id))).scalar()
    await session.commit()
    return bool(cancel)


async def mark_finished(
    *,
    session: AsyncSession,
    job_id: str,
    state: JobState,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> Job | None:
    values: dict[str, Any] = {"state": state, "error": error}
    if state in FINISHED:
        values["finished_at"] = utcnow()
    if result is not None:
        values["result"] = result
    await session.execute(update(Job).where(Job.id == job_id).values(**values))
    await session.commit()
    return await session.get(Job, job_id)


async def assign_owner(*, session: AsyncSession, job_id: str, owner_id: int) -> None:
    """Give a row sent without an owner (by beat) to a user, so it shows in their task list."""
    await session.execute(update(Job).where(Job.id == job_id).values(owner_id=owner_id))
    await session.commit()


async def purge_finished(*, session: AsyncSession, finished_before: datetime) -> int:
    """Delete rows finished before the cutoff; commits. Unfinished rows stay whatever their
    age: a task still queued or running must remain visible to its owner (and cancellable)."""
    result = await session.execute(
        delete(Job).where(Job.state.in_(FINISHED), Job.finished_at < finished_before)
    )
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]
