"""Migrations run up, down and up again on both backends, and match the models exactly."""

from pathlib import Path

import anyio.to_thread
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.db import Base
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
    context = MigrationContext.configure(connection, opts={"compare_type": True})
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
