"""Pytest plugin (registered in tests/conftest.py), usable from any test folder: a real worker
per test module and broker: embedded (SQLite broker, SQLite database) and Redis (a real
redis-server broker, PostgreSQL database). Tests in a module share the worker and its database
(data is made unique per test by the factory), and each test gets its own in-process API app
on the same settings.

It needs only the root conftest's fixtures (sqlite_template, postgres_server, redis_server);
its helpers (JobsStack, wait_for_task, run_by_name) are plain code in tests.support.workers.
A module adds settings for both sides (SMTP, time limits) by overriding `jobs_overrides`.
"""

import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI

from tests.support.factories import Factory
from tests.support.servers import PostgresServer, RedisServer
from tests.support.settings import TEST_SECRET, asgi_client, make_settings, started_app
from tests.support.workers import JobsStack, WorkerProcess, WorkerSpares

BROKER_REDIS_DB = 7  # away from the logical databases other tests flush


@pytest.fixture(scope="session")
def worker_spares(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerSpares]:
    """Workers whose imports are done before they are needed: each module's two workers start
    in ~2 s instead of ~7 (tests.support.workers.WorkerSpares)."""
    spares = WorkerSpares(tmp_path_factory.mktemp("worker-spares"))
    try:
        yield spares
    finally:
        spares.close()


@pytest.fixture(scope="session")
def stopping_workers() -> Iterator[list[WorkerProcess]]:
    """Embedded workers told to stop and not yet waited for: a module's embedded worker stops
    (1.5-2 s: Celery's and billiard's shutdown timers) while the next setup and tests run.
    Nothing of theirs is shared (own data directory, own broker file). Redis workers are
    waited for at once: the next one flushes and uses the same broker database."""
    stopping: list[WorkerProcess] = []
    try:
        yield stopping
    finally:
        for worker in stopping:
            worker.finish_stop()


@pytest.fixture(scope="session")
def jobs_postgres_template(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A migrated database that each module's [redis] database is copied from: one migration
    per session, not one per module (tests/test_migrations*.py test the migrations)."""
    from app.core.migrate import upgrade_to_head

    name = "jobs_migrated_template"
    url = postgres_server.create_database(name)
    upgrade_to_head(make_settings(tmp_path_factory.mktemp("jobs-template"), url))
    return name


@pytest.fixture(scope="module")
def jobs_overrides() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module", params=["embedded", "redis"])
def jobs_stack(
    request: pytest.FixtureRequest,
    worker_spares: WorkerSpares,  # first: the first spare imports while the rest is set up
    stopping_workers: list[WorkerProcess],
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    jobs_overrides: dict[str, str],
) -> Iterator[JobsStack]:
    data_dir = tmp_path_factory.mktemp(f"jobs-{request.param}")
    values = {
        "ENVIRONMENT": "test",
        "SECRET_KEY": TEST_SECRET,
        "APP_DATA_DIR": str(data_dir),
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_DEFAULT": "100000/minute",
        "RATE_LIMIT_LOGIN": "100000/minute",
        "RATE_LIMIT_LOGIN_ACCOUNT": "100000/minute",
        "RATE_LIMIT_REGISTER": "100000/minute",
    }
    if request.param == "embedded":
        shutil.copy(sqlite_template, data_dir / "app.db")
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        # By module path: modules in different folders share file names (test_tasks.py).
        module = request.module.__name__.removeprefix("tests.")
        name = "jobs_" + re.sub(r"\W", "_", module.lower())[:40]
        template: str = request.getfixturevalue("jobs_postgres_template")
        values["DATABASE_URL"] = postgres.create_database(name, template=template)
        broker = f"redis://127.0.0.1:{redis_server.port}/{BROKER_REDIS_DB}"
        with redis.Redis.from_url(broker) as client:
            client.flushdb()
        values["CELERY_BROKER_URL"] = broker
        values["REDIS_URL"] = broker  # distributed mode: the hub, limits and cache there too
    values.update(jobs_overrides)
    settings = make_settings(
        data_dir,
        values.get("DATABASE_URL"),
        **{key.lower(): value for key, value in values.items() if key != "DATABASE_URL"},
    )
    worker = WorkerProcess(values, data_dir / "worker.log", spares=worker_spares)
    worker.start()
    try:
        yield JobsStack(request.param, settings, values, worker)
    finally:
        if request.param == "embedded":
            worker.begin_stop()
            for gone in [w for w in stopping_workers if w.stopped()]:
                gone.finish_stop()  # reaped, and any pool process left is killed
                stopping_workers.remove(gone)
            stopping_workers.append(worker)
        else:
            worker.stop()


@pytest.fixture
async def jobs_app(jobs_stack: JobsStack) -> AsyncIterator[FastAPI]:
    async with started_app(jobs_stack.settings) as application:
        yield application


@pytest.fixture
async def jobs_client(jobs_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(jobs_app) as http:
        yield http


@pytest.fixture
def jobs_factory(jobs_client: httpx.AsyncClient, jobs_app: FastAPI) -> Factory:
    return Factory(jobs_client, jobs_app)
