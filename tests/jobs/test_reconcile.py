"""No job is lost when Redis or a worker dies (issue 13, item 5): the reconciler on real servers.

A Redis broker of this module's own (persistent, as deployed: it is killed and wiped here), the
session's PostgreSQL, and a real worker with short reconciler settings. Jobs go in as the API
sends them (`Jobs.enqueue`: the row, with what is needed to send it again, then the message).
Where beat would run the reconciler every JOB_RECONCILE_INTERVAL_SECONDS, the tests send it
every few seconds while they wait; a worker also runs it when it starts.
"""

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis

from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker, utcnow
from app.core.migrate import upgrade_to_head
from app.jobs.celery_app import RECONCILE_TASK, AppCelery, make_celery
from app.jobs.models import FINISHED, JobState
from app.jobs.reconcile import ADVISORY_LOCK_KEY
from app.jobs.service import LOST_ERROR, Jobs
from tests.support.servers import PostgresServer, RedisServer, running
from tests.support.settings import TEST_SECRET, make_settings
from tests.support.workers import WorkerProcess, WorkerSpares

DEADLINE_SECONDS = 45.0
RECONCILE_EVERY_SECONDS = 3.0  # the tests' stand-in for beat
GRACE_SECONDS = 1.0
MAX_REQUEUES = 2
RUNNING_SECONDS = 4.0  # a job long enough to kill something under it


@dataclass(frozen=True)
class Row:
    state: JobState
    error: str | None
    requeues: int
    result: Any


@dataclass
class Stack:
    settings: Settings
    redis: RedisServer
    worker: WorkerProcess
    database_url: str
    # One sender for the module, as an API process keeps one: it outlives the outages.
    celery: AppCelery

    def enqueue(self, *args: Any) -> str:
        async def enqueue() -> str:
            engine = create_engine(self.settings)
            try:
                async with create_sessionmaker(engine)() as session:
                    job = await Jobs(self.celery).enqueue(session, "app.noop", *args)
                    return job.id
            finally:
                await engine.dispose()

        return asyncio.run(enqueue())

    def reconcile(self) -> None:
        """What beat sends every JOB_RECONCILE_INTERVAL_SECONDS."""
        self.celery.send_task(RECONCILE_TASK)

    def rows(self, ids: list[str]) -> dict[str, Row]:
        async def fetch() -> dict[str, Row]:
            connection = await asyncpg.connect(self.database_url.replace("+asyncpg", ""))
            try:
                records = await connection.fetch(
                    "SELECT id, state, error, requeues, result FROM jobs WHERE id = ANY($1)", ids
                )
            finally:
                await connection.close()
            return {
                r["id"]: Row(
                    JobState(r["state"]),
                    r["error"],
                    r["requeues"],
                    None if r["result"] is None else json.loads(r["result"]),
                )
                for r in records
            }

        return asyncio.run(fetch())

    def wait(self, condition: Callable[[], Any], what: str, *, reconcile: bool = True) -> Any:
        """Poll until `condition()` is truthy; with `reconcile`, send the reconciler every few
        seconds meanwhile, as beat would."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        next_reconcile = time.monotonic() + RECONCILE_EVERY_SECONDS
        while not (value := condition()):
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.worker.tail(80)}")
            if reconcile and now >= next_reconcile:
                self.reconcile()
                next_reconcile = now + RECONCILE_EVERY_SECONDS
            time.sleep(0.1)  # polling a condition, bounded by the deadline
        return value

    def wait_finished(self, ids: list[str], *, reconcile: bool = True) -> dict[str, Row]:
        def finished() -> dict[str, Row] | None:
            rows = self.rows(ids)
            done = len(rows) == len(ids) and all(r.state in FINISHED for r in rows.values())
            return rows if done else None

        rows: dict[str, Row] = self.wait(finished, f"jobs {ids} to finish", reconcile=reconcile)
        return rows

    def wait_state(self, task_id: str, state: JobState) -> None:
        self.wait(
            lambda: (row := self.rows([task_id]).get(task_id)) and row.state == state,
            f"job {task_id} in {state}",
            reconcile=False,
        )

    def log(self) -> str:
        return self.worker.log_file.read_text(errors="replace")


@pytest.fixture(scope="module")
def stack(
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
    worker_spares: WorkerSpares,
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("reconcile")
    with running(RedisServer(persistent=True), "redis-server") as redis_server:
        database_url = postgres_server.create_database("jobs_reconcile")
        broker = redis_server.url
        values = {
            "ENVIRONMENT": "test",
            "SECRET_KEY": TEST_SECRET,
            "APP_DATA_DIR": str(data_dir),
            "LOG_LEVEL": "INFO",
            "DATABASE_URL": database_url,
            "REDIS_URL": broker,
            "CELERY_BROKER_URL": broker,
            "JOB_RECONCILE_GRACE_SECONDS": str(GRACE_SECONDS),
            "JOB_RECONCILE_INSPECT_TIMEOUT_SECONDS": "2",
            "JOB_RECONCILE_MAX_REQUEUES": str(MAX_REQUEUES),
            "JOB_STATE_RETRY_SECONDS": "20",
        }
        settings = make_settings(
            data_dir,
            database_url,
            **{key.lower(): value for key, value in values.items() if key != "DATABASE_URL"},
        )
        upgrade_to_head(settings)
        # One process: jobs queue up behind the running one, as they do on a busy worker.
        worker = WorkerProcess(values, data_dir / "worker.log", concurrency=1, spares=worker_spares)
        worker.start()
        celery = make_celery(settings)
        try:
            yield Stack(settings, redis_server, worker, database_url, celery)
        finally:
            celery.close()
            worker.stop()


def _queue_behind_a_running_job(stack: Stack, label: str) -> tuple[str, list[str]]:
    running_id = stack.enqueue(f"{label}: running", RUNNING_SECONDS)
    stack.wait_state(running_id, JobState.PROGRESS)
    queued = [stack.enqueue(f"{label}: queued {n}") for n in range(3)]
    return running_id, queued


def _assert_all_settled(rows: dict[str, Row]) -> None:
    for task_id, row in rows.items():
        assert row.state == JobState.SUCCESS or (
            row.state == JobState.FAILURE and row.error == LOST_ERROR
        ), (task_id, row)


def test_redis_killed_and_restarted_on_its_data_loses_no_job(stack: Stack) -> None:
    running_id, queued = _queue_behind_a_running_job(stack, "kill -9")

    stack.redis.kill()  # SIGKILL: no final write of the append-only file
    stack.redis.revive()  # same port, same data directory
    sent_after = stack.enqueue("kill -9: sent after the restart")

    rows = stack.wait_finished([running_id, *queued, sent_after])
    _assert_all_settled(rows)
    # The running job rode out the restart (its unacked message was in the file).
    assert rows[running_id].state == JobState.SUCCESS, stack.worker.tail(80)
    assert rows[sent_after].state == JobState.SUCCESS


def test_redis_wiped_loses_no_job(stack: Stack) -> None:
    running_id, queued = _queue_behind_a_running_job(stack, "wipe")
    with redis.Redis.from_url(stack.settings.broker_url) as client:
        client.flushall()  # every queue, the unacked hash, the queues' bindings
    # Through the module's sender, which declared the queues before the wipe.
    sent_after = stack.enqueue("wipe: sent after the wipe")

    rows = stack.wait_finished([running_id, *queued, sent_after])
    _assert_all_settled(rows)
    # Nothing was given up: each lost job was sent again and ran.
    assert {row.state for row in rows.values()} == {JobState.SUCCESS}, rows
    assert any(rows[i].requeues >= 1 for i in queued), rows
    assert "lost its message" in stack.log()


def test_a_killed_worker_s_job_is_redelivered_when_a_worker_starts(stack: Stack) -> None:
    task_id = stack.enqueue("worker killed", RUNNING_SECONDS)
    stack.wait_state(task_id, JobState.PROGRESS)

    killed_at = time.monotonic()
    stack.worker.kill()  # SIGKILL to the whole group: the parent can't put the message back
    stack.worker.start()
    # No help from the tests here: the new worker's reconciler, run at its start, finds the
    # message unacked by a worker that is gone and puts it back long before the visibility
    # timeout (an hour) would.
    row = stack.wait_finished([task_id], reconcile=False)[task_id]
    took = time.monotonic() - killed_at

    assert row.state == JobState.SUCCESS, (row, stack.worker.tail(80))
    assert row.requeues == 1
    assert "message put back in its queue" in stack.log()
    assert stack.settings.celery_visibility_timeout_seconds >= 3600
    assert took < DEADLINE_SECONDS, took


def test_a_job_lost_too_often_fails_with_a_reason_for_its_owner(stack: Stack) -> None:
    # A row whose message is gone, already sent again as often as allowed: a PENDING row
    # from before the grace period, with no message anywhere.
    task_id = "00000000-0000-4000-8000-000000000013"

    async def insert() -> None:
        connection = await asyncpg.connect(stack.database_url.replace("+asyncpg", ""))
        try:
            await connection.execute(
                "INSERT INTO jobs (id, name, state, attempts, cancel_requested, created_at,"
                " args, kwargs, queue, requeues) VALUES ($1, 'app.noop', 'PENDING', 0, false,"
                " $2, '[]', '{}', 'default', $3)",
                task_id, utcnow() - timedelta(minutes=5), MAX_REQUEUES,
            )  # fmt: skip
        finally:
            await connection.close()

    asyncio.run(insert())
    row = stack.wait_finished([task_id])[task_id]
    assert row.state == JobState.FAILURE
    assert row.error == LOST_ERROR


def test_one_reconciler_at_a_time(stack: Stack) -> None:
    """While another reconciler holds the lock, a run leaves even a lost job alone; the next
    run after it is released sends the job again."""
    task_id = str(uuid.uuid4())
    skipped = "'skipped': 'another reconciler is running'"

    async def lost_while_locked() -> None:
        connection = await asyncpg.connect(stack.database_url.replace("+asyncpg", ""))
        try:
            await connection.execute(
                "INSERT INTO jobs (id, name, state, attempts, cancel_requested, created_at,"
                " args, kwargs, queue, requeues) VALUES ($1, 'app.noop', 'PENDING', 0, false,"
                " $2, '[\"after the lock\"]', '{}', 'default', 0)",
                task_id, utcnow() - timedelta(minutes=5),
            )  # fmt: skip
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
                offset = len(stack.log())
                stack.reconcile()
                deadline = time.monotonic() + DEADLINE_SECONDS
                while skipped not in stack.log()[offset:]:
                    assert time.monotonic() < deadline, stack.worker.tail(40)
                    await asyncio.sleep(0.1)  # polling the worker's log, bounded
                state = await connection.fetchval("SELECT state FROM jobs WHERE id = $1", task_id)
                assert state == JobState.PENDING
        finally:
            await connection.close()

    asyncio.run(lost_while_locked())
    row = stack.wait_finished([task_id])[task_id]
    assert row.state == JobState.SUCCESS
    assert row.result == {"echo": "after the lock"}
