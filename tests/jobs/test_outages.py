"""A database or Redis restart while a job runs loses no job (found by tests/containers).

Real servers of this module's own (a restart must not disturb the session's shared ones):
PostgreSQL, Redis with its append-only file as deployed, and a real worker. The job is
`app.noop` with a delay, which records progress every half second while it runs.
"""

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import Settings
from app.core.migrate import upgrade_to_head
from app.jobs.celery_app import make_celery
from app.jobs.models import FINISHED, JobState
from app.jobs.transient import is_transient
from tests.support.processes import free_port
from tests.support.servers import PostgresServer, RedisServer, running
from tests.support.settings import TEST_SECRET, make_settings
from tests.support.waiting import eventually
from tests.support.workers import WorkerProcess, WorkerSpares

DEADLINE_SECONDS = 90.0
DELAY_SECONDS = 6.0  # long enough to restart a server under the running job
REDIS_DELAY_SECONDS = 10.0


@dataclass(frozen=True)
class JobRow:
    state: JobState
    result: Any
    error: str | None
    progress: dict[str, Any] | None


@dataclass
class Outages:
    postgres: PostgresServer
    redis: RedisServer
    settings: Settings
    worker: WorkerProcess
    database_url: str

    def send_noop(self, echo: str, delay: float = DELAY_SECONDS) -> str:
        celery = make_celery(self.settings)
        try:
            task_id = str(uuid.uuid4())
            celery.send_task("app.noop", args=[echo, delay], task_id=task_id)
            return task_id
        finally:
            celery.close()

    def job(self, task_id: str) -> JobRow | None:
        """The row, or None while it is not there or the database is down."""

        async def fetch() -> JobRow | None:
            url = self.database_url.replace("+asyncpg", "")
            connection = await asyncpg.connect(url, timeout=5)
            try:
                row = await connection.fetchrow(
                    "SELECT state, result, error, progress FROM jobs WHERE id = $1", task_id
                )
            finally:
                await connection.close()
            if row is None:
                return None
            result, progress = (
                None if row[key] is None else json.loads(row[key]) for key in ("result", "progress")
            )
            return JobRow(JobState(row["state"]), result, row["error"], progress)

        try:
            return asyncio.run(fetch())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None

    def wait_state(self, task_id: str, states: frozenset[JobState]) -> JobRow:
        row: JobRow = wait_until(
            lambda: (job := self.job(task_id)) is not None and job.state in states and job,
            f"job {task_id} in {sorted(states)}",
            self.worker,
        )
        return row


def wait_until(condition: Callable[[], Any], what: str, worker: WorkerProcess) -> Any:
    try:
        return eventually(condition, timeout=DEADLINE_SECONDS, interval=0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.tail(80)}") from None


@pytest.fixture(scope="module")
def outages(
    tmp_path_factory: pytest.TempPathFactory, worker_spares: WorkerSpares
) -> Iterator[Outages]:
    data_dir = tmp_path_factory.mktemp("outages")
    with (
        running(PostgresServer(), "PostgreSQL") as postgres,
        running(RedisServer(persistent=True), "redis-server") as redis_server,
    ):
        database_url = postgres.create_database("outages")
        broker = f"redis://127.0.0.1:{redis_server.port}/0"
        values = {
            "ENVIRONMENT": "test",
            "SECRET_KEY": TEST_SECRET,
            "APP_DATA_DIR": str(data_dir),
            "LOG_LEVEL": "INFO",
            "DATABASE_URL": database_url,
            "REDIS_URL": broker,
            "CELERY_BROKER_URL": broker,
        }
        settings = make_settings(data_dir, database_url, redis_url=broker,
                                 celery_broker_url=broker)  # fmt: skip
        upgrade_to_head(settings)
        worker = WorkerProcess(values, data_dir / "worker.log", concurrency=1, spares=worker_spares)
        worker.start()
        try:
            yield Outages(postgres, redis_server, settings, worker, database_url)
        finally:
            worker.stop()


def _log(outages: Outages) -> str:
    return outages.worker.log_file.read_text(errors="replace")


def test_a_redis_restart_under_a_running_job_loses_nothing(outages: Outages) -> None:
    task_id = outages.send_noop("through a Redis restart", delay=REDIS_DELAY_SECONDS)
    outages.wait_state(task_id, frozenset({JobState.PROGRESS}))

    outages.redis.halt()
    try:
        # Redis stays away for longer than any retry of Celery's own (2 s), and the job keeps
        # running and recording its progress meanwhile.
        wait_until(
            lambda: (job := outages.job(task_id)) and (job.progress or {}).get("current", 0) >= 4,
            "the job to progress while Redis is down",
            outages.worker,
        )
    finally:
        outages.redis.revive()
    with redis.Redis.from_url(outages.settings.broker_url) as client:
        # The running job's message came through the restart (append-only file), unacked.
        assert task_id in _messages(client), _messages(client)

        job = outages.wait_state(task_id, frozenset(FINISHED))
        assert job.state == JobState.SUCCESS, (job.error, outages.worker.tail(80))
        assert job.result == {"echo": "through a Redis restart"}
        # The worker is back on the broker: a job sent after the restart runs too.
        after = outages.send_noop("after the Redis restart", delay=0)
        assert outages.wait_state(after, frozenset(FINISHED)).state == JobState.SUCCESS
        # The late ack reached the restarted Redis: no copy of the message is left, queued or
        # unacknowledged, to run the job again (after the visibility timeout).
        assert _messages(client) == {}
    assert _log(outages).count(f"app.noop[{task_id}] received") == 1


def _messages(client: redis.Redis) -> dict[str, str]:
    """Task ID -> where its message is: "unacked", or the queue's key."""
    found = {}
    for raw in client.hvals("unacked"):
        found[json.loads(raw)[0]["headers"]["id"]] = "unacked"
    for key in client.scan_iter(b"default*"):
        if client.type(key) == b"list":
            for raw in client.lrange(key, 0, -1):
                found[json.loads(raw)["headers"]["id"]] = key.decode()
    return found


def test_a_database_restart_under_a_running_job_loses_nothing(outages: Outages) -> None:
    task_id = outages.send_noop("through a database restart")
    outages.wait_state(task_id, frozenset({JobState.PROGRESS}))
    offset = len(_log(outages))

    outages.postgres.halt()
    try:
        # The job is still running and has met the outage on a progress write.
        wait_until(
            lambda: "recording progress of app.noop" in _log(outages)[offset:],
            "the worker to meet the outage",
            outages.worker,
        )
    finally:
        outages.postgres.revive()

    job = outages.wait_state(task_id, frozenset(FINISHED))
    assert job.state == JobState.SUCCESS, (job.error, outages.worker.tail(80))
    assert job.result == {"echo": "through a database restart"}
    assert "could not record" not in _log(outages)


def test_outages_are_transient_and_bugs_are_not() -> None:
    dead = free_port()

    async def connect() -> None:
        engine = create_async_engine(f"postgresql+asyncpg://app@127.0.0.1:{dead}/app")
        try:
            async with engine.connect():
                pass
        finally:
            await engine.dispose()

    with pytest.raises(Exception) as refused:  # noqa: PT011 - whatever SQLAlchemy passes on
        asyncio.run(connect())
    assert is_transient(refused.value)
    with pytest.raises(redis.RedisError) as no_redis:
        redis.Redis(port=dead, socket_connect_timeout=2).ping()
    assert is_transient(no_redis.value)
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(KeyError("a bug"))
