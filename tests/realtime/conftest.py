"""The `live` fixture: the app on a real port per test (tests.support.live has the server,
the clients and the frame helpers)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.support.factories import Factory
from tests.support.live import DEADLINE, LiveFactory, LiveServer, serve
from tests.support.settings import empty_postgres, make_settings


@pytest.fixture
def live(database_url: str | None, tmp_path: Path, request: pytest.FixtureRequest) -> LiveFactory:
    """Start the app on a real port with settings overrides, on SQLite and on PostgreSQL."""

    @asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[LiveServer]:
        if database_url is not None:
            await empty_postgres(database_url)
        settings = make_settings(tmp_path, database_url, **overrides)
        app = create_app(settings)
        async with (
            serve(app, settings) as url,
            httpx.AsyncClient(base_url=url, timeout=DEADLINE) as http,
        ):
            yield LiveServer(app, url, http, Factory(http, app))

    return start
