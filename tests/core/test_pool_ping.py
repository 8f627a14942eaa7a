"""PostgreSQL connections are pinged before use only after sitting idle (issue 14: a ping at
every checkout was three round trips per request), and an idle connection that died meanwhile
(a restart, a failover, a proxy's idle timeout) is replaced before any statement sees it."""

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import create_engine
from tests.support.settings import make_settings

pytestmark = pytest.mark.postgres
IDLE_SECONDS = 0.2


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_an_idle_connection_killed_meanwhile_is_replaced_before_use(
    postgres_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=1, database_ping_idle_seconds=IDLE_SECONDS
    )
    engine, killer = create_engine(settings), create_engine(settings)
    try:
        first = await _backend_pid(engine)
        assert await _backend_pid(engine) == first  # not idle: reused without a ping
        async with killer.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        # Idleness is the condition under test: the connection must sit past its threshold.
        await asyncio.sleep(IDLE_SECONDS * 1.5)
        # Then it is pinged, found dead and replaced, and the statement runs on the new one:
        # no error reaches the caller (one attempt, not a retry loop).
        assert await _backend_pid(engine) != first
    finally:
        await engine.dispose()
        await killer.dispose()


def test_zero_pings_at_every_checkout(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, "postgresql://u@127.0.0.1:1/db", database_ping_idle_seconds=0
    )
    engine = create_engine(settings)
    assert engine.sync_engine.pool._pre_ping
