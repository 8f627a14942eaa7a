"""The base of every task: its row kept current, the request ID in its logs, progress,
cancellation at checkpoints, and errors shown to the owner only when they are safe to show.

    @job("app.maintenance.purge_jobs", title="Job history purge")
    def purge_jobs(task: JobTask) -> dict[str, Any]:
        cutoff = utcnow() - timedelta(days=task.runtime.settings.job_retention_days)
        jobs = task.in_session(
            lambda session: service.purge_finished(session=session, finished_before=cutoff)
        )
        return {"jobs": jobs}

A body is synchronous between its steps (progress checkpoints and SMTP run there); each step
that needs the database is a coroutine handed a session of its own by `in_session`.
"""

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from billiard.einfo import ExceptionInfo
from celery import Task, shared_task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.request_context import REQUEST_ID
from app.jobs import service, transient
from app.jobs.celery_app import AppCelery
from app.jobs.errors import Cancelled, JobError
from app.jobs.models import JobState
from app.jobs.runtime import WorkerRuntime, discard_runtime, get_runtime
from app.jobs.schemas import status_url

logger = logging.getLogger("app.jobs")
T = TypeVar("T")
INTERNAL_ERROR = "The task failed because of an internal error."
NOTIFIED_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE})


def safe_error(exc: BaseException) -> str:
    if isinstance(exc, JobError):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return "The task took too long and was stopped."
    return INTERNAL_ERROR


class JobTask(Task):  # type: ignore[misc]  # celery is untyped
    # Whether a row in `jobs` follows this task. Off for high-volume internal tasks (one per
    # campaign recipient), whose progress lives with their parent.
    tracked = True
    # Whether the reconciler may send this task again when its message is lost (a Redis wipe,
    # a dead worker): true for a body that may run twice with the same arguments (all ours).
    requeue_safe = True
    # Whether a STARTED/PROGRESS row means "the body is running". A task whose job stays
    # open after its body returns (a campaign, finished by its last mail) says False: the
    # reconciler then looks at its queued row only.
    reconcile_running = True
    # How the owner's notification names it ("Image processing finished"); `job()` requires it
    # of every tracked task, so this default is only for a JobTask made some other way.
    title = "Your task"

    @property
    def runtime(self) -> WorkerRuntime:
        celery = cast(AppCelery, self.app)
        return get_runtime(celery, celery.settings)

    def run_async(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runtime.run(coroutine)

    async def _with_session(self, step: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self.runtime.sessionmaker() as session:
            return await step(session)

    def in_session(self, step: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run one step on the worker's loop, handed a session of its own: a step commits what
        it changes, and its session is closed before the body goes on (say, to send mail)."""
        return self.run_async(self._with_session(step))

    def _record(self, step: Callable[[AsyncSession], Awaitable[T]], what: str) -> T:
        """A job-state write: `in_session`, riding out a database restart (each try gets a
        fresh session; see transient.record)."""
        return transient.record(
            self.runtime, lambda: self._with_session(step), f"{what} of {self.name}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = REQUEST_ID.set(self.request.get("request_id") or self.request.id)
        try:
            if self.tracked and self.request.id and not self._start():
                logger.info(
                    "task %s[%s] was cancelled (or given up) before it ran",
                    self.name, self.request.id,
                )  # fmt: skip
                raise Ignore()  # noqa: TRY301 - Celery's way to drop it; never retried
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            transient.retry_if_transient(self, exc)  # a database/broker restart: run it again
            raise
        finally:
            REQUEST_ID.reset(token)

    def _start(self) -> bool:
        owner = self.request.get("owner_id")
        request = self.request
        delivery = service.Delivery(
            worker=request.hostname,
            args=list(request.args or []),
            kwargs=dict(request.kwargs or {}),
            queue=(request.delivery_info or {}).get("routing_key"),
        )
        return self._record(
            lambda session: service.mark_started(
                session=session,
                job_id=request.id,
                name=self.name,
                owner_id=owner,
                delivery=delivery,
            ),
            "recording the start",
        )

    def progress(self, current: int, total: int, status: str) -> None:
        """PROGRESS with current/total/status; raises Cancelled if the owner cancelled."""
        meta = {"current": current, "total": total, "status": status}
        if not self.ignore_result:  # Celery's own store, only if CELERY_RESULT_BACKEND is set
            self.update_state(state="PROGRESS", meta=meta)
        if not (self.tracked and self.request.id):
            return

        if self._record(
            lambda session: service.mark_progress(
                session=session, job_id=self.request.id, progress=meta
            ),
            "recording progress",
        ):
            raise Cancelled()

    def _finish(
        self, task_id: str, state: JobState, *, result: Any = None, error: str | None = None
    ) -> None:
        if not self.tracked:
            return
        stored = (
            result if isinstance(result, dict) else None if result is None else {"value": result}
        )

        async def finish(session: AsyncSession) -> None:
            job = await service.mark_finished(
                session=session, job_id=task_id, state=state, result=stored, error=error
            )
            if job is not None:
                await self.on_finished(session, job.owner_id, task_id, state, stored, error)

        try:
            self._record(finish, "recording the end")
        except Exception:
            logger.exception("could not record the end of task %s[%s]", self.name, task_id)

    async def on_finished(
        self,
        session: AsyncSession,
        owner_id: int | None,
        task_id: str,
        state: JobState,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        """Tell the owner their task is done (RT-2): stored, then pushed to their sockets."""
        if owner_id is None or state not in NOTIFIED_STATES:
            return
        succeeded = state == JobState.SUCCESS
        follow = status_url(task_id, settings=self.runtime.settings)
        await self.runtime.notifications.send_to_user(
            session=session,
            user_id=owner_id,
            kind="job.succeeded" if succeeded else "job.failed",
            title=f"{self.title} {'finished' if succeeded else 'failed'}",
            body="" if succeeded else (error or ""),
            data={"task_id": task_id, "name": self.name, "state": state.value,
                  "result": result, "status_url": follow},
        )  # fmt: skip

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self._finish(task_id, JobState.SUCCESS, result=retval)

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
        logger.warning("task %s[%s] will be retried: %r", self.name, task_id, exc)
        self._finish(task_id, JobState.RETRY, error=safe_error(exc))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
        if isinstance(exc, SoftTimeLimitExceeded):
            discard_runtime()  # the limit may have struck inside the loop's own code
        if isinstance(exc, Cancelled):
            logger.info("task %s[%s] cancelled", self.name, task_id)
            self._finish(task_id, JobState.REVOKED, error="Cancelled.")
            return
        if not isinstance(exc, JobError):
            logger.error("task %s[%s] failed", self.name, task_id, exc_info=einfo.exc_info)
        self._finish(task_id, JobState.FAILURE, error=safe_error(exc))


F = TypeVar("F", bound=Callable[..., Any])


def job(name: str, *, title: str | None = None, **options: Any) -> Callable[[F], F]:
    """Declare a task: bound (its first argument is the JobTask), on JobTask (or `base=`, a
    subclass), named. A tracked task needs a `title`: its owner's notification names it."""
    if title is not None:
        options["title"] = title
    elif options.get("tracked", True):
        raise TypeError(f"task {name} is tracked: give it a title for its owner's notifications")

    def decorate(function: F) -> F:
        options.setdefault("base", JobTask)
        task = shared_task(name=name, bind=True, **options)(function)
        return cast(F, task)

    return decorate
