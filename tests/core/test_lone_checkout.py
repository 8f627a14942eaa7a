"""A lone statement's checkout (app.core.db `_checkout`): an idle, live connection is taken
without a greenlet (issue 14: the greenlets of checkout and checkin were ~20% of /users/me's
CPU), and every connection that needs I/O first (one to open, recycle or replace after a
disconnect) still gets it, through the greenlet, with no warning and no error for the caller.
A client that leaves during the ping costs the pool nothing. The ping of an idle connection on
this path: tests/core/test_pool_ping.py."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy.util
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

import app.core.db
from app.core.db import create_engine, read_one
from app.core.errors import database_unavailable
from tests.support.servers import PostgresServer
from tests.support.settings import make_settings
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.postgres

_PID = select(func.pg_backend_pid().label("pid"))
_SUICIDE = select(func.pg_terminate_backend(func.pg_backend_pid()))


async def _pid(engine: AsyncEngine) -> int:
    row = await read_one(engine, _PID)
    assert row is not None
    return int(row["pid"])


@pytest.fixture
def greenlets(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., Any]]:
    """The functions app.core.db runs in a greenlet, recorded as they go through."""
    spawned: list[Callable[..., Any]] = []
    real = sqlalchemy.util.greenlet_spawn

    def counted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        spawned.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(app.core.db, "greenlet_spawn", counted)
    return spawned


@pytest.fixture
async def engine(postgres_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=2, database_ping_idle_seconds=3600
    )
    created = create_engine(settings)
    yield created
    await created.dispose()


async def test_an_idle_live_connection_is_taken_without_a_greenlet(
    engine: AsyncEngine, greenlets: list[Callable[..., Any]]
) -> None:
    first = await _pid(engine)  # the pool is empty: the connection is opened in a greenlet
    assert len(greenlets) == 1
    for _ in range(3):
        assert await _pid(engine) == first  # the same connection, back in the pool each time
    assert len(greenlets) == 1
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0  # every checkout was checked in


async def test_a_connection_past_its_recycle_age_is_replaced_through_the_greenlet(
    postgres_url: str, tmp_path: Path, greenlets: list[Callable[..., Any]]
) -> None:
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=1, database_pool_recycle_seconds=1
    )
    engine = create_engine(settings)
    try:
        first = await _pid(engine)
        # Its age is the condition under test: wait until the pool counts it past the limit.
        record: Any = engine.sync_engine.pool._pool.next_idle()  # type: ignore[attr-defined]
        await eventually_async(
            lambda: time.time() - record.starttime > 1.0, timeout=5, what="the connection to age"
        )
        spawned = len(greenlets)
        # Closed gracefully and reopened in the greenlet; a plain checkout would have had to
        # force it shut and warn of an un-awaited connect (warnings fail these tests).
        assert await _pid(engine) != first
        assert len(greenlets) == spawned + 1
    finally:
        await engine.dispose()


async def test_connections_retired_by_a_disconnect_are_reopened_for_lone_statements(
    engine: AsyncEngine,
) -> None:
    """A statement that loses its connection retires every connection opened before it; the
    next lone statement finds its idle connection retired and reopens it, without error."""
    held = [await engine.connect() for _ in range(2)]
    for connection in held:  # two pooled connections, both idle again
        await connection.close()
    before = {await _pid(engine) for _ in range(2)}
    with pytest.raises(DBAPIError) as caught:
        await read_one(engine, _SUICIDE)
    assert caught.value.connection_invalidated
    assert await _pid(engine) not in before


async def test_a_lone_statement_cancelled_during_its_ping_gives_the_connection_back(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that leaves while its connection is being pinged (the ping stalls, as on a
    dead network path) costs the pool nothing: that connection is closed and given back, and
    the next statement runs."""
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=1, database_ping_idle_seconds=0
    )
    engine = create_engine(settings)
    pinging = asyncio.Event()

    def stalled_ping(_dialect: Any, _dbapi: Any) -> None:
        pinging.set()
        sqlalchemy.util.await_(asyncio.sleep(3600))

    try:
        first = await _pid(engine)  # opened for this statement: no ping
        monkeypatch.setattr(app.core.db, "_ping", stalled_ping)
        statement = asyncio.create_task(_pid(engine))  # idle 0 s is idle enough: a ping
        await asyncio.wait_for(pinging.wait(), timeout=5)
        statement.cancel()
        with pytest.raises(asyncio.CancelledError):
            await statement
        pool = engine.sync_engine.pool
        assert isinstance(pool, QueuePool)
        assert pool.checkedout() == 0
        monkeypatch.undo()
        assert await _pid(engine) != first  # the pinged one was closed: a new connection
    finally:
        await engine.dispose()


async def test_a_connection_refused_while_the_database_shuts_down_is_a_database_error(
    tmp_path: Path,
) -> None:
    """While PostgreSQL shuts down it refuses new connections (SQLSTATE 57P03). A lone
    statement that must open one raises SQLAlchemy's DBAPIError, as `engine.connect()` does,
    which the error handlers answer with a 503: not the driver adapter's own error (a 500,
    seen on the compose stack during a database restart)."""
    with PostgresServer() as server:
        url = server.create_database("shutdown")
        engine = create_engine(make_settings(tmp_path, url, database_pool_size=1))
        # A session left open keeps a smart shutdown waiting: the refusing window, held open.
        session = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            server.begin_smart_shutdown()
            await eventually_async(
                lambda: _refused(server.log_file), timeout=10, what="the shutdown to begin"
            )
            with pytest.raises(DBAPIError) as caught:
                await _pid(engine)
            assert database_unavailable(caught.value)
        finally:
            await session.close()  # the last session: the server now stops
            await engine.dispose()


def _refused(log: Path) -> bool:
    return "received smart shutdown request" in log.read_text(errors="replace")
