"""Settings for tests and the in-process apps built from them.

`make_settings` is the app's Settings with test values (a known secret, limits out of reach,
no .env file); `empty_postgres` truncates every table of a PostgreSQL test database;
`started_app`/`asgi_client` run the app with its real lifespan and talk to it through ASGI;
`BuildClient` is the type of the `build_client` fixture (tests/conftest.py).
"""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import Settings
from app.core.db import Base
from app.main import create_app

__all__ = [
    "GENEROUS_LIMIT",
    "TEST_SECRET",
    "AppClient",
    "BuildClient",
    "asgi_client",
    "empty_postgres",
    "make_settings",
    "started_app",
]

TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs512-0123456789abcdefgh"
# Tests register and log in far more often than people; the limits have their own tests.
GENEROUS_LIMIT = "100000/minute"


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: object) -> Settings:
    # Any: each field checks its own value; `object` would also be matched against the typed
    # BaseSettings keywords (_env_file, _case_sensitive...).
    values: dict[str, Any] = {
        "environment": "test",
        "secret_key": TEST_SECRET,
        "app_data_dir": data_dir,
        "database_url": database_url,
        "password_hash_concurrency": 4,
        "rate_limit_default": GENEROUS_LIMIT,
        "rate_limit_login": GENEROUS_LIMIT,
        "rate_limit_login_account": GENEROUS_LIMIT,
        "rate_limit_login_account_global": GENEROUS_LIMIT,
        "rate_limit_register": GENEROUS_LIMIT,
        "rate_limit_search": GENEROUS_LIMIT,
        "rate_limit_post_write": GENEROUS_LIMIT,
        "rate_limit_comment_write": GENEROUS_LIMIT,
        # Tests change a dependency and read readiness at once; its reuse has its own test.
        "readiness_cache_seconds": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


async def empty_postgres(url: str) -> None:
    """Empty every table of a migrated PostgreSQL database (cheaper than migrating again)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


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


AppClient = tuple[FastAPI, httpx.AsyncClient]
BuildClient = Callable[..., AbstractAsyncContextManager[AppClient]]
