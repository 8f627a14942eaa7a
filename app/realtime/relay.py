"""Embedded mode: notifications written by other processes reach this process's clients.

Without Redis there is no hub between processes, and a Celery worker that finishes a job
stores its notification in the database only. The API process polls the table for new rows
(one indexed range query every half second) and publishes them on its in-process hub.
Notifications this process sent itself were published already and are skipped.

Ids are not always committed in order (PostgreSQL hands out sequence values before commit),
so besides "ids above the last seen" the query re-reads a few seconds of recent rows, and a
set of the ids relayed lately keeps any of them from going out twice.
"""

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import utcnow
from app.core.pubsub import Hub
from app.realtime.models import Notification
from app.realtime.service import notification_channel, notification_read

logger = logging.getLogger("app.realtime")
LOOKBACK = timedelta(seconds=5)
BATCH = 500


class NotificationRelay:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], hub: Hub, *, interval: float
    ) -> None:
        self._sessionmaker = sessionmaker
        self._hub = hub
        self._interval = interval
        self._last_id: int | None = None  # read at the first poll: the app starts without I/O
        self._recent: dict[int, float] = {}  # id -> when relayed (or published locally)
        self._task: asyncio.Task[None] | None = None

    def note_published(self, notification_id: int) -> None:
        self._recent[notification_id] = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notification-relay")

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("notification relay: %s", exc)
            await asyncio.sleep(self._interval)

    async def poll_once(self) -> int:
        """Publish what appeared since the last poll; returns how many were published."""
        cutoff = utcnow() - LOOKBACK
        async with self._sessionmaker() as session:
            if self._last_id is None:
                self._last_id = await session.scalar(select(func.max(Notification.id))) or 0
            rows = (
                await session.execute(
                    select(Notification)
                    .where(or_(Notification.id > self._last_id, Notification.created_at > cutoff))
                    .order_by(Notification.id)
                    .limit(BATCH)
                )
            ).scalars().all()  # fmt: skip
        published = 0
        now = time.monotonic()
        for notification in rows:
            self._last_id = max(self._last_id, notification.id)
            if notification.id in self._recent:
                continue
            self._recent[notification.id] = now
            frame = notification_read(notification).model_dump_json().encode()
            await self._hub.publish(notification_channel(notification), frame)
            published += 1
        horizon = now - 2 * LOOKBACK.total_seconds()
        self._recent = {k: t for k, t in self._recent.items() if t >= horizon}
        return published

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
