"""Counting the SQL statements a request costs (N+1 checks), on the app's own engine."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@contextmanager
def counted_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements run on `engine` inside the block. The job gauges' refresh
    (app.jobs.monitor) shares the engine on its own schedule, so its reads of `jobs` are
    left out: a count must not depend on whether a refresh fell inside the block."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM jobs" not in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
