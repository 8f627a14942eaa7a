"""PostgreSQL connections are pinged before use only after sitting idle (issue 14: a ping at
every checkout was three round trips per request), and an idle connection that died meanwhile
(a restart, a failover, a proxy's idle timeout) is replaced before any statement sees it."""

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import create_engine
from tests.support.settings import make_settings
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.postgres
IDLE_SECONDS = 0.2


_PID = text("SELECT pg_backend_pid()")


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(_PID)).scalar_one())


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


async def test_a_connection_the_database_closed_is_replaced_at_checkout_without_a_ping(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart closes every pooled connection at once. The driver sees each socket close as
    it happens, and checkout hands none of them out: no request meets one, and no ping is
    spent finding out."""
    size = 3
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=size, database_ping_idle_seconds=3600
    )
    engine, killer = create_engine(settings), create_engine(settings)
    pings = _count_pings(engine, monkeypatch)
    try:
        held = [await engine.connect() for _ in range(size)]
        drivers = [(await c.get_raw_connection()).driver_connection for c in held]
        pids = {(await c.execute(_PID)).scalar_one() for c in held}
        for connection in held:
            await connection.close()
        async with killer.connect() as connection:
            for pid in pids:
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await eventually_async(
            lambda: all(d is not None and d.is_closed() for d in drivers) or None,
            timeout=10, what="the driver to see its connections closed",
        )  # fmt: skip
        for _ in range(size):  # each pooled one is replaced as it is checked out
            assert await _backend_pid(engine) not in pids
        assert pings == []
    finally:
        await engine.dispose()
        await killer.dispose()


def _count_pings(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[DBAPIConnection]:
    """The pings the engine sends, recorded as they go through to the real `do_ping`."""
    pings: list[DBAPIConnection] = []
    dialect = engine.sync_engine.dialect
    real = dialect.do_ping

    def counted(dbapi_connection: DBAPIConnection) -> bool:
        pings.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counted)
    return pings


@pytest.mark.parametrize(("idle_seconds", "expected"), [(0, 2), (3600, 0)])
async def test_pings_follow_the_idle_threshold(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    idle_seconds: float, expected: int,
) -> None:  # fmt: skip
    """0 pings at every checkout (but a brand-new connection's); otherwise only after idling."""
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=1, database_ping_idle_seconds=idle_seconds
    )
    engine = create_engine(settings)
    pings = _count_pings(engine, monkeypatch)
    try:
        for _ in range(3):
            await _backend_pid(engine)
        assert len(pings) == expected
    finally:
        await engine.dispose()
