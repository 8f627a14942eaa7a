"""`read_one` and `write_one`, the hot-path statements on the driver (issue 14): the same row
as SQLAlchemy's Core or ORM gives, parameters converted by their types, committed writes,
constraint failures as IntegrityError, on both backends; and on PostgreSQL a connection lost
under a statement becomes the DBAPIError the error handlers know (a 503, not a 500), and the
pool replaces that connection."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.auth.models import User
from app.auth.schemas import UserPrivate
from app.core.config import Settings
from app.core.db import UTCDateTime, create_engine, create_sessionmaker, read_one
from app.core.errors import database_unavailable
from app.items.models import Currency, Item
from app.items.schemas import ItemRead
from app.items.service import items
from app.users.service import _READ_PRIVATE
from tests.support.settings import empty_postgres, make_settings

_users: Any = User.__table__


async def _insert_user(engine: AsyncEngine) -> int:
    async with engine.begin() as connection:
        result = await connection.execute(
            _users.insert().returning(_users.c.id),
            {"username": "reader", "email": "reader@example.com", "hashed_password": "x",
             "full_name": "Ada", "age": 36},
        )  # fmt: skip
        return int(result.scalar_one())


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    created = create_engine(settings)
    yield created
    await created.dispose()


async def test_the_same_row_as_core_on_either_backend(engine: AsyncEngine) -> None:
    user_id = await _insert_user(engine)
    async with engine.connect() as connection:
        core = (await connection.execute(_READ_PRIVATE, {"user_id": user_id})).mappings().one()
    row = await read_one(engine, _READ_PRIVATE, user_id=user_id)
    assert row is not None
    assert row.keys() == core.keys()
    # Values as the driver gives them (an enum as its text): the schema makes them equal.
    assert UserPrivate.model_validate(dict(row)) == UserPrivate.model_validate(dict(core))
    assert row["created_at"].tzinfo is not None
    assert await read_one(engine, _READ_PRIVATE, user_id=user_id + 1000) is None
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0  # every connection went back to the pool


_SINCE = select(_users.c.id).where(_users.c.created_at > bindparam("since", type_=UTCDateTime()))


async def test_parameters_go_through_their_types_conversion(engine: AsyncEngine) -> None:
    user_id = await _insert_user(engine)
    hour = timedelta(hours=1)
    # An aware time in another zone is converted to UTC by the column's type, as Core does.
    tokyo = datetime.now(UTC).astimezone(timezone(timedelta(hours=9)))
    assert await read_one(engine, _SINCE, since=tokyo - hour) == {"id": user_id}
    assert await read_one(engine, _SINCE, since=tokyo + hour) is None
    # The type's own check runs too: a naive time is refused, not sent as it is.
    with pytest.raises(StatementError, match="naive"):
        await read_one(engine, _SINCE, since=datetime.now())


async def test_an_insert_is_the_row_the_orm_would_write_and_is_committed(
    engine: AsyncEngine,
) -> None:
    owner = await _insert_user(engine)
    before = datetime.now(UTC)
    row = await items.insert(
        engine, title="Lamp", description=None, price=Decimal("12.50"),
        currency=Currency.USD, owner_id=owner,
    )  # fmt: skip
    # The Python-side defaults filled in as the ORM fills them; the key from the database.
    assert before <= row["created_at"] <= row["updated_at"] <= datetime.now(UTC)
    assert row["deleted_at"] is None
    # Committed as it returned: a new session reads the same item.
    async with create_sessionmaker(engine)() as session:
        stored = await session.get(Item, row["id"])
        assert stored is not None
        assert ItemRead.model_validate(row) == ItemRead.model_validate(stored)
    with pytest.raises(AttributeError, match="colour"):
        await items.insert(engine, title="x", price=1, owner_id=owner, colour="red")


async def test_a_constraint_failure_is_an_integrity_error_and_writes_nothing(
    engine: AsyncEngine,
) -> None:
    owner = await _insert_user(engine)
    with pytest.raises(IntegrityError):  # the handlers' and the services' type for it
        await items.insert(
            engine, title="Orphan", price=Decimal(1), currency=Currency.JPY,
            owner_id=owner + 1000,
        )  # fmt: skip
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0  # the failed statement's connection went back too
    async with create_sessionmaker(engine)() as session:
        assert await items.count(session) == 0


# A read that ends its own backend: the connection dies under the statement, after the
# checkout's free check passed it (a restart that lands mid-query, seen by the driver only then).
_SUICIDE = select(func.pg_terminate_backend(func.pg_backend_pid()))
_BACKEND_PID = select(func.pg_backend_pid().label("pid"))


@pytest.mark.postgres
async def test_a_connection_lost_mid_read_is_a_database_error_and_is_replaced(
    postgres_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=1, database_ping_idle_seconds=3600
    )
    await empty_postgres(postgres_url)
    engine = create_engine(settings)
    try:
        user_id = await _insert_user(engine)
        with pytest.raises(DBAPIError) as caught:
            await read_one(engine, _SUICIDE)
        assert caught.value.connection_invalidated
        assert database_unavailable(caught.value)  # the handlers' test for a 503
        # The pool dropped it: the next read opens a new connection and succeeds.
        row = await read_one(engine, _READ_PRIVATE, user_id=user_id)
        assert row is not None
        assert row["id"] == user_id
    finally:
        await engine.dispose()


async def _pool_pids(engine: AsyncEngine, size: int) -> set[int]:
    """The backends of `size` pooled connections, held at once so each is a different one."""
    held = [await engine.connect() for _ in range(size)]
    try:
        return {(await c.execute(_BACKEND_PID)).scalar_one() for c in held}
    finally:
        for connection in held:
            await connection.close()


@pytest.mark.postgres
async def test_a_lost_connection_retires_the_others_it_was_opened_with(
    postgres_url: str, tmp_path: Path
) -> None:
    """A connection found dead under a statement (a restart) retires every connection opened
    before it, so the others are not met one request at a time: here the two survivors are
    replaced too, although they still work."""
    size = 3
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=size, database_ping_idle_seconds=3600
    )
    engine = create_engine(settings)
    try:
        before = await _pool_pids(engine, size)
        assert len(before) == size
        with pytest.raises(DBAPIError):
            await read_one(engine, _SUICIDE)
        after = await _pool_pids(engine, size)
        assert len(after) == size
        assert not after & before
    finally:
        await engine.dispose()
