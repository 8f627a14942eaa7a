"""The jobs heartbeat (JOBS-6): beat sends it, a worker stores it, readiness reads it.

It lives in the database, not Redis: every API process can read it in either mode, the row
costs one upsert per interval, and readiness needs the database anyway.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import utcnow
from app.jobs.models import Heartbeat

NAME = "jobs"
HeartbeatStatus = Literal["ok", "stale", "unknown"]


async def record(session: AsyncSession, source: str, at: datetime | None = None) -> None:
    """Upsert: two workers beating at once must not fail on the primary key."""
    values = {"name": NAME, "beat_at": at or utcnow(), "source": source[:255]}
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(Heartbeat).values(**values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[Heartbeat.name],
            set_={"beat_at": statement.excluded.beat_at, "source": statement.excluded.source},
        )
    )
    await session.commit()


@dataclass(frozen=True, slots=True)
class HeartbeatState:
    status: HeartbeatStatus
    last_heartbeat: datetime | None
    age_seconds: float | None


async def read(session: AsyncSession, *, stale_after: float) -> HeartbeatState:
    """`unknown`: never seen (no beat deployed yet, or a fresh database)."""
    beat_at = (
        await session.execute(select(Heartbeat.beat_at).where(Heartbeat.name == NAME))
    ).scalar()
    if beat_at is None:
        return HeartbeatState("unknown", None, None)
    # Rounded before the comparison: a status of "stale" always comes with an age past the
    # limit (3.0004 s used to say stale with an age of 3.0 against a limit of 3).
    age = round(max(0.0, (utcnow() - beat_at).total_seconds()), 3)
    return HeartbeatState("stale" if age > stale_after else "ok", beat_at, age)
