"""Job gauges for /metrics (OPS-3): messages waiting per queue and jobs per state.

Run by each API process's background task manager (JOBS-8): losing a refresh costs nothing,
the next one comes `JOB_METRICS_REFRESH_SECONDS` later.
"""

import asyncio
import logging
import sqlite3
from contextlib import closing

import anyio.to_thread
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import metrics
from app.core.config import Settings
from app.jobs.celery_app import QUEUES
from app.jobs.models import Job, JobState

logger = logging.getLogger("app.jobs.monitor")
# kombu's Redis transport keeps a queue's messages in one list per priority step.
REDIS_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def _embedded_depths(settings: Settings) -> dict[str, int]:
    path = settings.embedded_broker_path
    if not path.exists():
        return {}
    # Read-only: a metrics reader must never create or lock the broker's file for writing.
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as connection:
        try:
            rows = connection.execute(
                "SELECT q.name, COUNT(m.id) FROM kombu_queue q LEFT JOIN kombu_message m"
                " ON m.queue_id = q.id AND m.visible = 1 GROUP BY q.name"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # no worker or sender has created them yet
                return {}
            raise
    return {str(name): int(count) for name, count in rows}


async def _redis_depths(client: Redis) -> dict[str, int]:
    async with client.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            for suffix in REDIS_PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        lengths = await pipe.execute()
    steps = len(REDIS_PRIORITY_SUFFIXES)
    return {queue: sum(lengths[n * steps : (n + 1) * steps]) for n, queue in enumerate(QUEUES)}


async def _state_counts(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessionmaker() as session:
        rows = (await session.execute(select(Job.state, func.count()).group_by(Job.state))).all()
    return {str(state): count for state, count in rows}


async def refresh(
    *, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis | None
) -> None:
    if settings.embedded_broker:
        depths = await anyio.to_thread.run_sync(_embedded_depths, settings)
    elif redis is not None:
        depths = await _redis_depths(redis)
    else:
        depths = None  # another transport: no portable way to count
    if depths is not None:
        for queue in QUEUES:
            metrics.JOB_QUEUE_DEPTH.labels(queue=queue).set(depths.get(queue, 0))
    counts = await _state_counts(sessionmaker)
    for state in JobState:
        metrics.JOBS_BY_STATE.labels(state=state.value).set(counts.get(state.value, 0))


async def run(*, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Refresh until cancelled; a failed refresh is logged and tried again next time."""
    redis = (
        Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
        if settings.broker_url.startswith(("redis://", "rediss://"))
        else None
    )
    try:
        while True:
            try:
                await refresh(settings=settings, sessionmaker=sessionmaker, redis=redis)
            except Exception:
                logger.warning("could not refresh the job metrics", exc_info=True)
            await asyncio.sleep(settings.job_metrics_refresh_seconds)
    finally:
        if redis is not None:
            await redis.aclose()
