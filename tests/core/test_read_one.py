"""`read_one`, the hot-path read on the driver (issue 14): the same row as SQLAlchemy's Core
gives, on both backends; and on PostgreSQL a connection lost under it becomes the DBAPIError
the error handlers know (a 503, not a 500), and the pool replaces that connection."""

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.models import User
from app.auth.schemas import UserPrivate
from app.core.config import Settings
from app.core.db import UTCDateTime, _positional, create_engine, read_one
from app.core.errors import database_unavailable
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


async def test_the_same_row_as_core_on_either_backend(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
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
    finally:
        await engine.dispose()


def test_a_parameter_that_needs_conversion_is_refused() -> None:
    # A UTC datetime is checked and converted by its type on the way in: the driver path
    # would skip that, so the statement is refused rather than run unconverted.
    since = select(_users.c.id).where(_users.c.created_at > bindparam("since", type_=UTCDateTime()))
    with pytest.raises(ValueError, match="since"):
        _positional(since, asyncpg.dialect())  # type: ignore[no-untyped-call]


@pytest.mark.postgres
async def test_a_connection_lost_mid_read_is_a_database_error_and_is_replaced(
    postgres_url: str, tmp_path: Path
) -> None:
    # Pings only after a long idle, so the dead connection is handed out and the read finds it.
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=1, database_ping_idle_seconds=3600
    )
    await empty_postgres(postgres_url)
    engine, killer = create_engine(settings), create_engine(settings)
    try:
        user_id = await _insert_user(engine)
        async with engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with killer.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as caught:
            await read_one(engine, _READ_PRIVATE, user_id=user_id)
        assert caught.value.connection_invalidated
        assert database_unavailable(caught.value)  # the handlers' test for a 503
        # The pool dropped it: the next read opens a new connection and succeeds.
        row = await read_one(engine, _READ_PRIVATE, user_id=user_id)
        assert row is not None
        assert row["id"] == user_id
    finally:
        await engine.dispose()
        await killer.dispose()
