"""What the realtime endpoints share in one process, opened and closed by the lifespan."""

import asyncio
import logging
import weakref
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.cache import Cache
from app.core.config import Settings
from app.core.pubsub import Hub
from app.core.ratelimit import Policies, RateLimiter
from app.core.redis import Redis
from app.realtime.leases import ConnectionLeases
from app.realtime.manager import ConnectionManager
from app.realtime.relay import NotificationRelay
from app.realtime.revocation import SessionWatch
from app.realtime.service import NotificationService

logger = logging.getLogger("app.realtime")


@dataclass(slots=True)
class Realtime:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    limiter: RateLimiter
    policies: Policies
    manager: ConnectionManager
    notifier: NotificationService
    relay: NotificationRelay | None
    watch: SessionWatch
    _room_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )

    def room_lock(self, room: str) -> asyncio.Lock:
        """Held from a message's insert to its publish, so that in one process a room's live
        order is its id order (the order of history). Kept while a connection holds it."""
        lock = self._room_locks.get(room)
        if lock is None:
            lock = self._room_locks[room] = asyncio.Lock()
        return lock

    async def drain(self) -> None:
        """Graceful shutdown: close every WebSocket with 1001 and end every SSE stream, then
        give them a moment to say goodbye before the server closes the connections itself."""
        self.manager.stop()
        if not await self.manager.wait_empty(self.settings.shutdown_drain_seconds):
            logger.warning("%d realtime connections still open at shutdown", self.manager.count)

    async def close(self) -> None:
        await self.watch.close()
        if self.relay is not None:
            await self.relay.close()
        await self.manager.close()
        if self.manager.leases is not None:
            await self.manager.leases.close()


async def start_realtime(
    *,
    settings: Settings,
    hub: Hub,
    redis: Redis | None,
    cache: Cache,
    sessionmaker: async_sessionmaker[AsyncSession],
    limiter: RateLimiter,
    policies: Policies,
) -> Realtime:
    relay = None
    if settings.redis_url is None:
        relay = NotificationRelay(
            sessionmaker, hub, interval=settings.notification_relay_interval_seconds
        )
        relay.start()
    leases = None
    if redis is not None:
        leases = ConnectionLeases(redis, lease_seconds=settings.ws_connection_lease_seconds)
        leases.start()
    notifier = NotificationService(hub, on_published=relay.note_published if relay else None)
    manager = ConnectionManager(
        hub,
        max_per_user=settings.ws_max_connections_per_user,
        leases=leases,
        resync_concurrency=settings.realtime_resync_concurrency,
    )
    watch = SessionWatch(
        manager,
        hub,
        cache=cache,
        sessionmaker=sessionmaker,
        interval=settings.ws_session_recheck_seconds,
    )
    await watch.start()
    return Realtime(
        settings=settings,
        sessionmaker=sessionmaker,
        limiter=limiter,
        policies=policies,
        manager=manager,
        notifier=notifier,
        relay=relay,
        watch=watch,
    )
