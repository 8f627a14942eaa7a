"""Migrations run up, down and up again on both backends, and match the models exactly."""

from pathlib import Path

import anyio.to_thread
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.db import Base, include_in_schema_comparison, utcnow
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
        connection, opts={"compare_type": True, "include_object": include_in_schema_comparison}
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


def _job_columns(connection: Connection) -> set[str]:
    return {column["name"] for column in inspect(connection).get_columns("jobs")}


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
