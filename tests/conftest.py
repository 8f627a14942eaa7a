"""Fixtures: every API test runs against SQLite and against a real PostgreSQL server.

Each test gets an isolated database: a fresh copy of a migrated SQLite file, or a
PostgreSQL database emptied before the test. The app runs in-process with its real
lifespan, and httpx talks to it through ASGI. Plain helpers (settings builders, servers,
factories) are in tests.support; nothing imports from this file.
"""

import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from app.core.config import Settings
from app.core.migrate import upgrade_to_head
from app.main import create_app
from tests.support.factories import Factory
from tests.support.servers import PostgresServer, RedisServer, running
from tests.support.settings import (
    AppClient,
    BuildClient,
    asgi_client,
    empty_postgres,
    make_settings,
    started_app,
)

# The real-worker fixtures (jobs_stack, jobs_app, jobs_client, jobs_factory), for any folder.
pytest_plugins = ["tests.plugins.workers", "tests.plugins.smtp"]


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
        await empty_postgres(database_url)
    return make_settings(tmp_path, database_url)


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
