"""Migrations run up, down and up again on both backends, and match the models exactly."""

from pathlib import Path

import anyio.to_thread
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.db import Base, utcnow
from app.core.fulltext import include_object
from app.core.migrate import alembic_config, upgrade_to_head
from tests.support.servers import PostgresServer
from tests.support.settings import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
def migration_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"migrations_{tmp_path.name[-8:].replace('-', '_')}")


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": include_object}
    )
    return list(compare_metadata(context, Base.metadata))


# SQLite can't reflect expression indexes (lower(username)); PostgreSQL compares them.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
async def test_upgrade_downgrade_upgrade_matches_models(
    migration_url: str | None, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, migration_url)
    config = alembic_config(settings)

    await anyio.to_thread.run_sync(upgrade_to_head, settings)
    await anyio.to_thread.run_sync(command.downgrade, config, "base")
    await anyio.to_thread.run_sync(upgrade_to_head, settings)

    engine = create_async_engine(settings.sqlalchemy_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []


RECONCILE_COLUMNS = {"args", "kwargs", "queue", "worker", "requeues"}


def _columns(connection: Connection, table: str) -> set[str]:
    return {column["name"] for column in inspect(connection).get_columns(table)}


def _job_columns(connection: Connection) -> set[str]:
    return _columns(connection, "jobs")


# The downgrade's batch copy of `jobs` reflects SQLite's schema (see above).
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
async def test_the_reconciler_columns_go_up_and_down_and_keep_existing_jobs(
    migration_url: str | None, tmp_path: Path
) -> None:
    """0008: a job queued before the upgrade gets requeues 0 (not NULL) and no args (the
    reconciler fails it rather than guess); the downgrade drops the columns, not the rows."""
    settings = make_settings(tmp_path, migration_url)
    config = alembic_config(settings)
    await anyio.to_thread.run_sync(command.upgrade, config, "4c2e3b1d0004")
    engine = create_async_engine(settings.sqlalchemy_url)
    try:
        async with engine.begin() as connection:
            assert RECONCILE_COLUMNS & await connection.run_sync(_job_columns) == set()
            await connection.execute(
                text(
                    "INSERT INTO jobs (id, name, state, attempts, cancel_requested, created_at)"
                    " VALUES ('before-0008', 'app.noop', 'PENDING', 0, false, :at)"
                ),
                {"at": utcnow()},
            )
        await anyio.to_thread.run_sync(command.upgrade, config, "7a1c9e2f0008")
        async with engine.connect() as connection:
            assert await connection.run_sync(_job_columns) >= RECONCILE_COLUMNS
            row = (
                await connection.execute(
                    text("SELECT requeues, args FROM jobs WHERE id = 'before-0008'")
                )
            ).one()
            assert tuple(row) == (0, None)
        await anyio.to_thread.run_sync(command.downgrade, config, "4c2e3b1d0004")
        async with engine.connect() as connection:
            assert RECONCILE_COLUMNS & await connection.run_sync(_job_columns) == set()
            count = await connection.scalar(text("SELECT count(*) FROM jobs"))
            assert count == 1
    finally:
        await engine.dispose()


_SEARCH_OBJECTS = {
    "sqlite": "SELECT count(*) FROM sqlite_master WHERE name LIKE 'items_fts%'",
    "postgresql": (
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = 'items' AND column_name = 'search_vector'"
    ),
}
_MATCHES = {
    "sqlite": "SELECT rowid FROM items_fts WHERE items_fts MATCH 'kettle'",
    "postgresql": (
        "SELECT id FROM items WHERE search_vector @@ websearch_to_tsquery('english', 'kettle')"
    ),
}


async def test_the_search_index_covers_rows_from_before_it_and_goes_away(
    migration_url: str | None, tmp_path: Path
) -> None:
    """0011: items that existed before the upgrade are found at once (FTS5 rebuild, generated
    column); the downgrade leaves no full-text column, table or trigger behind."""
    settings = make_settings(tmp_path, migration_url)
    config = alembic_config(settings)
    await anyio.to_thread.run_sync(command.upgrade, config, "0009")
    engine = create_async_engine(settings.sqlalchemy_url)
    try:
        async with engine.begin() as connection:
            dialect = connection.dialect.name
            values = {"at": utcnow()}
            await connection.execute(
                text(
                    "INSERT INTO users (id, username, email, hashed_password, role, is_active,"
                    " is_verified, created_at, updated_at)"
                    " VALUES (1, 'u', 'u@example.com', 'x', 'user', true, true, :at, :at)"
                ),
                values,
            )
            await connection.execute(
                text(
                    "INSERT INTO items (id, title, price, currency, owner_id, created_at,"
                    " updated_at) VALUES (7, 'Copper kettles', 1, 'JPY', 1, :at, :at)"
                ),
                values,
            )
        await anyio.to_thread.run_sync(upgrade_to_head, settings)
        async with engine.connect() as connection:
            assert (await connection.execute(text(_MATCHES[dialect]))).scalars().all() == [7]
        await anyio.to_thread.run_sync(command.downgrade, config, "0009")
        async with engine.connect() as connection:
            assert await connection.scalar(text(_SEARCH_OBJECTS[dialect])) == 0
    finally:
        await engine.dispose()


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
async def test_user_age_goes_up_and_down_and_keeps_existing_users(
    migration_url: str | None, tmp_path: Path
) -> None:
    """0013: users made before it have no age (NULL); the downgrade drops the column only."""
    settings = make_settings(tmp_path, migration_url)
    config = alembic_config(settings)
    await anyio.to_thread.run_sync(command.upgrade, config, "0009")
    engine = create_async_engine(settings.sqlalchemy_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO users (username, email, hashed_password, role, is_active,"
                    " is_verified, created_at, updated_at)"
                    " VALUES ('before', 'b@example.com', 'x', 'user', true, false, :at, :at)"
                ),
                {"at": utcnow()},
            )
        await anyio.to_thread.run_sync(command.upgrade, config, "0013")
        async with engine.connect() as connection:
            age = await connection.scalar(text("SELECT age FROM users WHERE username = 'before'"))
            assert age is None
        await anyio.to_thread.run_sync(command.downgrade, config, "0009")
        async with engine.connect() as connection:
            columns = await connection.run_sync(_columns, "users")
            assert "age" not in columns
            assert await connection.scalar(text("SELECT count(*) FROM users")) == 1
    finally:
        await engine.dispose()
