"""Counting the SQL statements a request costs (N+1 checks), on the app's own engine."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# What the background readers select from (no request under test reads these tables).
BACKGROUND_READS = ("FROM jobs", "FROM notifications")


@contextmanager
def counted_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements run on `engine` inside the block, but for the app's background readers
    that share the engine on their own schedule: the job gauges' refresh (app.jobs.monitor,
    reads `jobs`) and, in embedded mode, the notification relay (app.realtime.relay, reads
    `notifications` every half second; CI once counted one of its polls in a request). A count
    must not depend on whether one of them fell inside the block."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not any(table in statement for table in BACKGROUND_READS):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
