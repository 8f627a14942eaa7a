"""The job reconciler: no job row stays PENDING or PROGRESS for ever because its message is gone.

A job's message can be lost while its row says it is queued or running: Redis restarted
without its append-only file (or was wiped), lost its last second of writes to a crash, or a
whole worker died (SIGKILL, OOM) holding it unacknowledged, which the Redis transport would
only hand out again after the visibility timeout. The reconciler runs when a worker starts
and every JOB_RECONCILE_INTERVAL_SECONDS (beat), and applies one rule:

    A job row in PENDING, RETRY, STARTED or PROGRESS, older than JOB_RECONCILE_GRACE_SECONDS,
    whose message is in no queue and is held by no live worker, is lost.

"Held by a live worker": with Redis, the ids that live workers report (`inspect query_task`,
bounded by JOB_RECONCILE_INSPECT_TIMEOUT_SECONDS) as reserved, scheduled or running; a message
in the `unacked` hash that no live worker reports belongs to a dead worker. If the inspection
is not answered by the reconciler's own worker, nobody's answer is trusted and unacked
messages are left alone this run. With the embedded broker (one worker node, app/worker.py) a
message row that is still in the table is either queued or held by that worker.

A lost job is sent again (a dead worker's unacked message is put back at the head of its
queue; a vanished one is published again from the row's name, args and queue), at most
JOB_RECONCILE_MAX_REQUEUES times, then failed with LOST_ERROR, which its owner sees and is
notified of. Tasks may run twice (a slow worker that missed the inspection): every task is
written to be idempotent, and one that is not says `requeue_safe = False` and is failed.

Two reconcilers may run at once (worker start and beat): on PostgreSQL an advisory lock lets
one through, and every action is a compare-and-set on the row (state and requeue count), so
a job is sent again at most once per decision whatever runs concurrently.
"""

import json
import logging
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import utcnow
from app.jobs.base import JobTask
from app.jobs.celery_app import QUEUES, AppCelery
from app.jobs.models import Job, JobState
from app.jobs.service import LOST_ERROR

logger = logging.getLogger("app.jobs.reconcile")

QUEUED_STATES = (JobState.PENDING, JobState.RETRY)
RUNNING_STATES = (JobState.STARTED, JobState.PROGRESS)
# pg_try_advisory_lock's key: "jobs" in ASCII. Any constant no other lock in the app uses.
ADVISORY_LOCK_KEY = 0x6A6F6273
SCAN_CHUNK = 1000  # messages read per LRANGE: a long queue is read in bounded steps


class Where(StrEnum):
    QUEUED = "queued"  # waiting in a queue: a worker will take it
    HELD = "held"  # taken by a live worker
    UNACKED = "unacked"  # taken, not acknowledged, by a worker that may be dead
    NOWHERE = "nowhere"


class Broker(Protocol):
    def locate(self, ids: set[str]) -> dict[str, Where]:
        """Where each id's message is; ids missing from the answer are NOWHERE."""
        ...

    def held_by_live_workers(self, ids: set[str]) -> set[str] | None:
        """The ids live workers hold; None when that cannot be known this run."""
        ...

    def restore(self, task_id: str) -> bool:
        """Put a dead worker's unacked message back at the head of its queue."""
        ...

    def forget(self, task_id: str) -> None:
        """Drop an unacked copy, so the visibility timeout doesn't bring back a failed job."""
        ...

    def close(self) -> None: ...


def _task_id(payload: dict[str, Any]) -> str | None:
    headers = payload.get("headers") or {}
    task_id = headers.get("id") or (payload.get("properties") or {}).get("correlation_id")
    return str(task_id) if task_id else None


@dataclass
class RedisBroker:
    """kombu's Redis transport: one list per queue and priority step, and the `unacked` hash
    (delivery tag -> [message, exchange, routing key]) of messages taken and not acked."""

    celery: AppCelery
    own_node: str | None
    inspect_timeout: float
    _tags: dict[str, str] = field(default_factory=dict)  # task id -> delivery tag, if unacked

    def __post_init__(self) -> None:
        self._connection = self.celery.connection_for_write()
        self._channel: Any = self._connection.default_channel

    def locate(self, ids: set[str]) -> dict[str, Where]:
        client = self._channel.client
        found: dict[str, Where] = {}
        self._tags.clear()
        for tag, raw in client.hscan_iter(self._channel.unacked_key):
            task_id = _task_id(json.loads(raw)[0])
            if task_id in ids:
                found[task_id] = Where.UNACKED
                self._tags[task_id] = tag.decode() if isinstance(tag, bytes) else tag
        for queue in QUEUES:
            for priority in self._channel.priority_steps:
                key = self._channel._q_for_pri(queue, priority)
                start = 0
                while chunk := client.lrange(key, start, start + SCAN_CHUNK - 1):
                    for raw in chunk:
                        task_id = _task_id(json.loads(raw))
                        if task_id in ids:
                            found[task_id] = Where.QUEUED
                    start += SCAN_CHUNK
        return found

    def held_by_live_workers(self, ids: set[str]) -> set[str] | None:
        inspect = self.celery.control.inspect(timeout=self.inspect_timeout)
        replies: dict[str, dict[str, Any]] | None = inspect.query_task(*sorted(ids))
        if not replies or (self.own_node is not None and self.own_node not in replies):
            # Our own worker must answer: else the broadcast itself is broken, and silence
            # says nothing about the other workers either.
            return None
        return {task_id for reply in replies.values() for task_id in (reply or {})}

    def restore(self, task_id: str) -> bool:
        tag = self._tags.get(task_id)
        if tag is None:
            return False
        # kombu's own restore: a transaction on the unacked hash, so of two reconcilers (or
        # the transport's visibility-timeout restore) only one puts the message back.
        self._channel.qos.restore_by_tag(tag, client=self._channel.client)
        return True

    def forget(self, task_id: str) -> None:
        tag = self._tags.get(task_id)
        if tag is not None:
            self._channel.qos._remove_from_indices(tag).execute()

    def close(self) -> None:
        self._connection.release()


@dataclass
class EmbeddedBroker:
    """The SQLite broker (app/jobs/broker.py): an acked message's row is deleted, a taken one
    is invisible; the one worker node it serves re-queued a dead worker's at its start."""

    path: Path

    def locate(self, ids: set[str]) -> dict[str, Where]:
        if not self.path.exists():
            return {}
        found: dict[str, Where] = {}
        uri = f"file:{self.path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as connection:
            try:
                rows = connection.execute("SELECT payload, visible FROM kombu_message")
                for payload, visible in rows:
                    task_id = _task_id(json.loads(payload))
                    if task_id in ids:
                        found[task_id] = Where.QUEUED if visible else Where.HELD
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
        return found

    def held_by_live_workers(self, ids: set[str]) -> set[str] | None:
        return set()  # what the one worker holds is HELD already

    def restore(self, task_id: str) -> bool:
        return False

    def forget(self, task_id: str) -> None:
        return None

    def close(self) -> None:
        return None


def open_broker(celery: AppCelery, own_node: str | None) -> Broker:
    settings = celery.settings
    if settings.embedded_broker:
        return EmbeddedBroker(settings.embedded_broker_path)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisBroker(celery, own_node, settings.job_reconcile_inspect_timeout_seconds)
    raise RuntimeError(f"the reconciler does not know the broker {settings.broker_url!r}")


@dataclass
class Outcome:
    looked_at: int = 0
    restored: int = 0
    resent: int = 0
    failed: int = 0
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    state: JobState
    requeues: int
    owner_id: int | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    queue: str | None


async def candidates(
    session: AsyncSession, *, older_than: timedelta, limit: int, running_ok: set[str]
) -> list[Candidate]:
    """Open rows past the grace period, oldest first. Running rows only of tasks whose
    running row means a running body (`running_ok`)."""
    cutoff = utcnow() - older_than
    queued = and_(Job.state.in_(QUEUED_STATES), Job.created_at < cutoff)
    running = and_(
        Job.state.in_(RUNNING_STATES),
        func.coalesce(Job.started_at, Job.created_at) < cutoff,
        Job.name.in_(sorted(running_ok)),
    )
    rows = await session.execute(
        select(Job).where(or_(queued, running)).order_by(Job.created_at, Job.id).limit(limit)
    )
    return [
        Candidate(
            job.id, job.name, job.state, job.requeues, job.owner_id, job.args, job.kwargs, job.queue
        )
        for job in rows.scalars()
    ]


async def _claim(session: AsyncSession, job: Candidate, **values: Any) -> bool:
    """Compare-and-set: the row is still as we saw it (no worker started it, no other
    reconciler acted on it). Commits."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == job.state, Job.requeues == job.requeues)
        .values(**values)
    )
    await session.commit()
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


class Reconciler:
    def __init__(self, task: JobTask) -> None:
        self.task = task
        self.celery: AppCelery = task.app
        self.settings = self.celery.settings
        self.runtime = task.runtime

    def _task(self, name: str) -> JobTask | None:
        task = self.celery.tasks.get(name)
        return task if isinstance(task, JobTask) else None

    def _running_ok(self) -> set[str]:
        return {
            name
            for name, task in self.celery.tasks.items()
            if getattr(task, "reconcile_running", False) and getattr(task, "tracked", False)
        }

    async def run(self) -> Outcome:
        engine = self.runtime.engine
        if engine.dialect.name != "postgresql":
            return await self._run()  # SQLite: one worker node (the embedded broker's)
        # A transaction-scoped advisory lock on a connection held for the whole run: released
        # when the transaction ends, whatever happens (a session-level lock would stay with a
        # pooled connection if its unlock were missed, and lock every other worker out).
        async with engine.connect() as connection, connection.begin():
            locked = await connection.scalar(
                select(func.pg_try_advisory_xact_lock(ADVISORY_LOCK_KEY))
            )
            if not locked:
                return Outcome(skipped="another reconciler is running")
            return await self._run()

    async def _run(self) -> Outcome:
        settings = self.settings
        async with self.runtime.sessionmaker() as session:
            rows = await candidates(
                session,
                older_than=timedelta(seconds=settings.job_reconcile_grace_seconds),
                limit=settings.job_reconcile_batch_size,
                running_ok=self._running_ok(),
            )
        outcome = Outcome(looked_at=len(rows))
        if not rows:
            return outcome
        own_node = self.task.request.hostname
        broker = await anyio.to_thread.run_sync(open_broker, self.celery, own_node)
        try:
            lost = await self._find_lost(broker, rows)
            for job, where in lost:
                await self._settle(broker, job, where, outcome)
        finally:
            await anyio.to_thread.run_sync(broker.close)
        return outcome

    async def _find_lost(
        self, broker: Broker, rows: list[Candidate]
    ) -> list[tuple[Candidate, Where]]:
        ids = {row.id for row in rows}
        where = await anyio.to_thread.run_sync(broker.locate, ids)
        suspects = {i for i in ids if where.get(i, Where.NOWHERE) in (Where.UNACKED, Where.NOWHERE)}
        if not suspects:
            return []
        held = await anyio.to_thread.run_sync(broker.held_by_live_workers, suspects)
        if held is None:
            logger.warning("no answer from the workers' inspection: unacked jobs left alone")
            suspects = {i for i in suspects if where.get(i, Where.NOWHERE) == Where.NOWHERE}
        else:
            suspects -= held
        if not suspects:
            return []
        # A second look, after the inspection's wait: a message between a worker's BRPOP and
        # its entry in `unacked` (or a send right after the commit) is seen this time.
        again = await anyio.to_thread.run_sync(broker.locate, suspects)
        return [
            (row, again.get(row.id, Where.NOWHERE))
            for row in rows
            if row.id in suspects
            and again.get(row.id, Where.NOWHERE) in (Where.UNACKED, Where.NOWHERE)
        ]

    async def _settle(self, broker: Broker, job: Candidate, where: Where, outcome: Outcome) -> None:
        task = self._task(job.name)
        can_resend = (
            task is not None
            and task.requeue_safe
            and job.requeues < self.settings.job_reconcile_max_requeues
            and (where == Where.UNACKED or job.args is not None)
        )
        async with self.runtime.sessionmaker() as session:
            if not can_resend:
                if await self._fail(session, broker, job, where, task):
                    outcome.failed += 1
                return
            # Queued again: PENDING until a worker starts it (the owner sees it waiting).
            if not await _claim(
                session, job, state=JobState.PENDING, requeues=job.requeues + 1, worker=None
            ):
                return
        if where == Where.UNACKED:
            # Not restored: the transport's own restore or the worker's ack came first.
            if await anyio.to_thread.run_sync(broker.restore, job.id):
                outcome.restored += 1
                logger.warning(
                    "job %s[%s]: its worker is gone; message put back in its queue",
                    job.name,
                    job.id,
                )
            return
        await self._resend(job)
        outcome.resent += 1

    async def _resend(self, job: Candidate) -> None:
        logger.warning(
            "job %s[%s] lost its message (%s); sending it again (%d)",
            job.name,
            job.id,
            job.state,
            job.requeues + 1,
        )
        options: dict[str, Any] = {"queue": job.queue} if job.queue else {}

        def send() -> None:
            self.celery.send_task(
                job.name,
                args=list(job.args or []),
                kwargs=dict(job.kwargs or {}),
                task_id=job.id,
                headers={"request_id": job.id},
                **options,
            )

        await anyio.to_thread.run_sync(send)

    async def _fail(
        self,
        session: AsyncSession,
        broker: Broker,
        job: Candidate,
        where: Where,
        task: JobTask | None,
    ) -> bool:
        if not await _claim(
            session, job, state=JobState.FAILURE, error=LOST_ERROR, finished_at=utcnow()
        ):
            return False
        logger.error(
            "job %s[%s] lost its message %d time(s); failed", job.name, job.id, job.requeues + 1
        )
        if where == Where.UNACKED:
            await anyio.to_thread.run_sync(broker.forget, job.id)
        if task is not None:
            await task.on_finished(
                session, job.owner_id, job.id, JobState.FAILURE, None, LOST_ERROR
            )
        return True


def reconcile(task: JobTask) -> dict[str, Any]:
    """One pass (the task `app.maintenance.reconcile_jobs`); returns what it did."""
    outcome = task.run_async(Reconciler(task).run())
    if outcome.restored or outcome.resent or outcome.failed:
        logger.warning("job reconciler: %s", outcome.as_dict())
    return outcome.as_dict()
