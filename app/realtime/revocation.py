"""Ends live connections whose session has ended: at once when the event arrives over the
hub (app/auth/revocation.py), otherwise at the next re-check.

The event reaches every API process within a pub/sub round trip. It is lost when Redis is
down or the process is reconnecting to it, so every `WS_SESSION_RECHECK_SECONDS` each live
session is checked as a request's token is (one cache lookup, the database on a miss): a
connection outlives its session by at most that period plus one round of checks.
"""

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import principal as principals
from app.auth.revocation import CHANNEL, EndReason, SessionsEnded
from app.core.cache import Cache
from app.core.pubsub import Hub, Subscription
from app.realtime.manager import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHORIZED,
    ConnectionManager,
    Subscriber,
)

logger = logging.getLogger("app.realtime")


def close_code_for(reason: EndReason) -> int:
    """4403 when what the user may do changed (a role change: access may be gone even after
    logging in again), 4401 when the session or account ended."""
    return CLOSE_FORBIDDEN if reason is EndReason.ROLE_CHANGED else CLOSE_UNAUTHORIZED


class SessionWatch:
    def __init__(
        self,
        manager: ConnectionManager,
        hub: Hub,
        *,
        cache: Cache,
        sessionmaker: async_sessionmaker[AsyncSession],
        interval: float,
    ) -> None:
        self._manager = manager
        self._hub = hub
        self._cache = cache
        self._sessionmaker = sessionmaker
        self._interval = interval
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # Attached before the process serves anything: no connection can miss an event.
        # Events lost while the hub reconnected may have ended sessions whose state this
        # process still holds near copies of: drop them all.
        self._hub.on_resubscribed(self._cache.forget_near)
        self._subscription = self._hub.subscribe(CHANNEL)
        await self._subscription.__aenter__()
        self._tasks = [
            asyncio.create_task(self._listen(self._subscription), name="sessions-ended"),
            asyncio.create_task(self._recheck_forever(), name="session-recheck"),
        ]

    def apply(self, event: SessionsEnded) -> int:
        # First: a request that follows the event must not pass on a near copy.
        principals.forget_near(cache=self._cache, session_ids=event.session_ids)
        ended = self._manager.end_sessions(
            event.user_id,
            event.session_ids,
            close_code_for(event.reason),
            f"session ended: {event.reason}",
        )
        if ended:
            logger.info("closed %d connections of user %d (%s)", ended, event.user_id,
                        event.reason)  # fmt: skip
        return ended

    async def confirm(self, subscriber: Subscriber) -> None:
        """Once registered, check the session again: an event that came between the token's
        check and the registration found nothing to close, but its tombstone is written
        before it is published, so this sees it."""
        await self._check(subscriber.user_id, subscriber.session_id)

    async def _check(self, user_id: int, session_id: str) -> int:
        try:
            live = await principals.session_is_live(
                cache=self._cache,
                sessionmaker=self._sessionmaker,
                user_id=user_id,
                session_id=session_id,
            )
        except (SQLAlchemyError, RedisError, OSError) as exc:
            # An outage says nothing about the session: keep it, the next round tries again.
            logger.warning("session re-check failed: %s", type(exc).__name__)
            return -1
        if live:
            return 0
        return self._manager.end_sessions(
            user_id, (session_id,), CLOSE_UNAUTHORIZED, "session ended"
        )

    async def _listen(self, subscription: Subscription) -> None:
        while True:
            event = SessionsEnded.decode(await subscription.get())
            if event is not None:
                self.apply(event)

    async def recheck(self) -> int:
        """One round: each live session checked once, one after another (at most one pooled
        database connection, and only on cache misses); how many connections it closed."""
        ended = 0
        for user_id, session_id in self._manager.live_sessions():
            closed = await self._check(user_id, session_id)
            if closed < 0:
                break  # the rest would fail the same way
            ended += closed
        return ended

    async def _recheck_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.recheck()
            except Exception:  # a bug here must not end the watch
                logger.exception("session re-check failed")
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._subscription is not None:
            await self._subscription.__aexit__(None, None, None)
            self._subscription = None
