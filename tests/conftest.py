"""Fixtures: every API test runs against SQLite and against a real PostgreSQL server.

Each test gets an isolated database: a fresh copy of a migrated SQLite file, or a
PostgreSQL database emptied before the test. The app runs in-process with its real
lifespan, and httpx talks to it through ASGI.
"""

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import Settings
from app.core.db import Base
from app.core.migrate import upgrade_to_head
from app.main import create_app
from tests.factories import Factory
from tests.servers import PostgresServer, RedisServer, running

# The real-worker fixtures (jobs_stack, jobs_app, jobs_client, jobs_factory), for any folder.
pytest_plugins = ["tests.plugins.workers", "tests.plugins.smtp"]

TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs512-0123456789abcdefgh"


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: object) -> Settings:
    # Any: each field checks its own value; `object` would also be matched against the typed
    # BaseSettings keywords (_env_file, _case_sensitive...).
    values: dict[str, Any] = {
        "environment": "test",
        "secret_key": TEST_SECRET,
        "app_data_dir": data_dir,
        "database_url": database_url,
        "password_hash_concurrency": 4,
        # Tests register and log in far more often than people; the limits have their own tests.
        "rate_limit_default": "100000/minute",
        "rate_limit_login": "100000/minute",
        "rate_limit_login_account": "100000/minute",
        "rate_limit_login_account_global": "100000/minute",
        "rate_limit_register": "100000/minute",
        # Tests change a dependency and read readiness at once; its reuse has its own test.
        "readiness_cache_seconds": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running(PostgresServer(), "PostgreSQL") as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    # Persistent as deployed: it is the broker of the distributed fixtures (jobs_stack, system).
    with running(RedisServer(persistent=True), "redis-server") as server:
        yield server


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    """The shared Redis, emptied for each test."""
    client = Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    return redis_server.url


@pytest.fixture(params=["memory", "redis"])
def shared_state(request: pytest.FixtureRequest) -> str | None:
    """Where rate limits, cache and revocation snapshots live: in-process, or Redis."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database; each test copies it instead of migrating again."""
    data_dir = tmp_path_factory.mktemp("sqlite-template")
    upgrade_to_head(make_settings(data_dir))
    return data_dir / "app.db"


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = postgres_server.create_database("app_test")
    upgrade_to_head(make_settings(tmp_path_factory.mktemp("pg"), url))
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _empty_postgres(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | None:
    """Resolved lazily, so a SQLite-only run never starts PostgreSQL."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copy(template, tmp_path / "app.db")
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def settings(database_url: str | None, tmp_path: Path) -> Settings:
    if database_url is not None:
        await _empty_postgres(database_url)
    return make_settings(tmp_path, database_url)


@asynccontextmanager
async def started_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan run, as a server would run it."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with started_app(settings) as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as http:
        yield http


@pytest.fixture
def factory(client: httpx.AsyncClient, app: FastAPI) -> Factory:
    return Factory(client, app)


AppClient = tuple[FastAPI, httpx.AsyncClient]
BuildClient = Callable[..., AbstractAsyncContextManager[AppClient]]


@pytest.fixture
def build_client(sqlite_template: Path, tmp_path: Path, shared_state: str | None) -> BuildClient:
    """An app with settings overridden for one test, on SQLite, with memory or Redis state."""
    shutil.copy(sqlite_template, tmp_path / "app.db")

    @asynccontextmanager
    async def build(**overrides: object) -> AsyncIterator[AppClient]:
        settings = make_settings(tmp_path, None, redis_url=shared_state, **overrides)
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            yield app, client

    return build
