"""Alembic environment: async engine, URL from the app's settings, batch mode on SQLite."""

import asyncio
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alembic import context
from alembic.operations import ops
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app import models  # noqa: F401 - every table on Base.metadata, for autogenerate
from app.core.config import get_settings
from app.core.db import Base, include_in_schema_comparison

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # The CLI passes the URL it resolved; plain `alembic` falls back to the settings.
    return config.get_main_option("sqlalchemy.url") or get_settings().sqlalchemy_url


def _number_the_revision(_context: Any, _revision: Any, directives: list[Any]) -> None:
    """`alembic revision` writes `NNNN_<slug>.py` with revision id NNNN, the next number after
    the highest file in versions/ (alembic.ini's file_template is `%(rev)s_%(slug)s`). An id
    given with `--rev-id` is kept."""
    script = directives[0] if directives else None
    if not isinstance(script, ops.MigrationScript) or re.fullmatch(r"\d{4}", script.rev_id or ""):
        return
    versions = Path(__file__).parent / "versions"
    script.rev_id = f"{_highest_number(versions.glob('*.py')) + 1:04d}"


def _highest_number(files: Iterable[Path]) -> int:
    numbers = (re.match(r"(\d+)_", file.name) for file in files)
    return max((int(match.group(1)) for match in numbers if match), default=0)


def _configure(connection: Connection | None = None) -> None:
    context.configure(
        connection=connection,
        url=None if connection is not None else _url(),
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER by copying the table
        compare_type=True,
        include_object=include_in_schema_comparison,
        literal_binds=connection is None,
        process_revision_directives=_number_the_revision,
    )


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure()
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
