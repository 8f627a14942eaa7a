"""The connection pool serves waiting checkouts first come first served (app/core/pool.py):
a returned connection goes to the longest waiter, never to a checkout that started after it;
a waiter that times out or is cancelled takes no connection with it; a lone statement waits
its turn too. On both backends."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import exc, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from app.core.db import create_engine, read_one
from app.core.pool import FairAsyncPool
from tests.support.settings import make_settings


@pytest.fixture
async def engine(database_url: str | None, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """One connection, so every second checkout waits; a short timeout for the test of it."""
    settings = make_settings(
        tmp_path,
        database_url,
        database_pool_size=1,
        database_max_overflow=0,
        database_pool_timeout_seconds=1,
    )
    created = create_engine(settings)
    yield created
    await created.dispose()


def _pool(engine: AsyncEngine) -> QueuePool:
    pool = engine.sync_engine.pool
    assert isinstance(pool, FairAsyncPool)
    return pool


async def _checkout(engine: AsyncEngine) -> PoolProxiedConnection:
    # The pool's own checkout, as a request's session or lone statement makes it.
    return await greenlet_spawn(_pool(engine).connect)


async def _waiting(engine: AsyncEngine, count: int) -> None:
    """Until `count` checkouts wait in line (each takes a few event loop steps to get there)."""
    queue = _pool(engine)._pool
    for _ in range(1000):
        if len(queue._waiters) == count:  # type: ignore[attr-defined]  # FairQueue's line
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} checkouts never waited")


@pytest.mark.parametrize("late_comer", ["checkout", "lone statement"])
async def test_a_returned_connection_goes_to_the_longest_waiter(
    engine: AsyncEngine, late_comer: str
) -> None:
    """Whoever comes late waits its turn: a checkout, or a lone statement (`read_one`, which
    checks out its own way, without a greenlet when a connection is idle)."""
    order: list[str] = []

    async def take(name: str) -> None:
        connection = await _checkout(engine)
        order.append(name)
        await greenlet_spawn(connection.close)

    async def lone_statement() -> None:
        assert await read_one(engine, select(literal_column("1").label("one"))) == {"one": 1}
        order.append("late")

    held = await _checkout(engine)
    first = asyncio.create_task(take("first"))
    await _waiting(engine, 1)
    second = asyncio.create_task(take("second"))
    await _waiting(engine, 2)
    # Given back, and at once (before the waiters get a step) a new checkout starts: on
    # SQLAlchemy's own queue it takes the connection ahead of both.
    await greenlet_spawn(held.close)
    late = asyncio.create_task(take("late") if late_comer == "checkout" else lone_statement())
    await asyncio.gather(first, second, late)
    assert order == ["first", "second", "late"]
    assert _pool(engine).checkedout() == 0


async def test_a_waiter_that_times_out_takes_nothing_with_it(engine: AsyncEngine) -> None:
    held = await _checkout(engine)
    with pytest.raises(exc.TimeoutError):  # SQLAlchemy's own, as the 503 handler expects
        await _checkout(engine)
    await greenlet_spawn(held.close)
    again = await _checkout(engine)  # the dead waiter is skipped, not handed the connection
    await greenlet_spawn(again.close)
    assert _pool(engine).checkedout() == 0


async def test_a_waiter_cancelled_as_it_is_served_passes_the_connection_on(
    engine: AsyncEngine,
) -> None:
    held = await _checkout(engine)
    cancelled = asyncio.create_task(_checkout(engine))
    await _waiting(engine, 1)
    served = asyncio.create_task(_checkout(engine))
    await _waiting(engine, 2)
    await greenlet_spawn(held.close)  # handed to `cancelled`, which has not run yet
    cancelled.cancel()  # as a client going away would
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    connection = await asyncio.wait_for(served, timeout=5)
    assert _pool(engine).checkedout() == 1
    await greenlet_spawn(connection.close)
    assert _pool(engine).checkedout() == 0
