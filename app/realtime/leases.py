"""The per-user connection cap across API processes (RT-5): each live WebSocket or SSE
stream holds a lease in `rt:conns:<user id>` (the machinery is app.core.leases)."""

from redis.asyncio import Redis

from app.core.leases import Leases

KEY_PREFIX = "rt:conns:"


class ConnectionLeases(Leases):
    def __init__(self, redis: Redis, *, lease_seconds: float) -> None:
        super().__init__(redis, key_prefix=KEY_PREFIX, lease_seconds=lease_seconds)
