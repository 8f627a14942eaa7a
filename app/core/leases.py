"""Per-user caps across API processes, kept in Redis: realtime connections (RT-5,
app.realtime.leases) and downloads (app.core.streams), each under its own key prefix.

Each live connection holds a lease: a member of the sorted set `<prefix><user id>` scored
by when it expires. Taking one is a script, so two processes
admitting the same user at once cannot both take the last slot. Leases expire rather than
rely on being released: a process that dies (SIGKILL, lost host) leaves leases that lapse
within the lease time, so its users are not locked out for good. Live leases are renewed
together in one pipeline a few times per lease time, and released ones are removed in the
same round, so closing a connection never waits on Redis.

Time is Redis's own clock (TIME in the scripts): API hosts whose clocks disagree still agree
on when a lease expires.

Without Redis (embedded mode) there is one API process per data directory in practice, and
the manager's own count is the cap.
"""

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import uuid
from collections import defaultdict

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("app.leases")

# KEYS[1] the user's set; ARGV: lease ms, limit, member. 1 if taken, else 0.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# KEYS[1] the user's set; ARGV: lease ms, then the members this process still holds.
# ZADD without XX: after a Redis restart the live leases come back on the next round.
_RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return #ARGV - 1
"""


class Leases:
    def __init__(self, redis: Redis, *, key_prefix: str, lease_seconds: float) -> None:
        self._redis = redis
        self._key_prefix = key_prefix
        self._lease_ms = int(lease_seconds * 1000)
        self._renew_every = lease_seconds / 3
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        # Unique across processes and restarts, so one process never renews another's lease.
        self._prefix = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}:"
        self._counter = itertools.count()
        self._held: dict[str, int] = {}  # lease -> user id
        self._released: list[tuple[int, str]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain(), name=f"leases {self._key_prefix}")

    async def acquire(self, user_id: int, limit: int) -> str | None:
        """A lease for one more connection of this user, or None at the cap.

        If Redis cannot answer, the connection is admitted without a lease (each process's
        own cap still holds): refusing every connection while Redis recovers would be worse.
        """
        lease = f"{self._prefix}{next(self._counter)}"
        try:
            taken = await self._acquire(
                keys=[f"{self._key_prefix}{user_id}"], args=[self._lease_ms, limit, lease]
            )
        except RedisError as exc:
            logger.warning("connection lease not taken, Redis unavailable: %s", exc)
            return ""
        if not taken:
            return None
        self._held[lease] = user_id
        return lease

    def release(self, user_id: int, lease: str) -> None:
        """Never waits: the lease is removed in the next round (or lapses if that fails)."""
        if self._held.pop(lease, None) is not None:
            self._released.append((user_id, lease))
            self._wake.set()

    async def _maintain(self) -> None:
        # The flag, not only the cancel, ends the loop: under load a cancel that lands inside
        # redis-py's own timeouts was seen to be lost, and the loop kept renewing after close.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._renew_every):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return  # close() runs the last round itself
            try:
                await self._round()
            except RedisError as exc:
                logger.warning("connection leases not renewed, Redis unavailable: %s", exc)

    async def _round(self) -> None:
        released, self._released = self._released, []
        by_user: defaultdict[int, list[str]] = defaultdict(list)
        for lease, user_id in self._held.items():
            by_user[user_id].append(lease)
        if not released and not by_user:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id, lease in released:
                pipe.zrem(f"{self._key_prefix}{user_id}", lease)
            for user_id, leases in by_user.items():
                await self._renew(
                    keys=[f"{self._key_prefix}{user_id}"],
                    args=[self._lease_ms, *leases],
                    client=pipe,
                )
            await pipe.execute()

    async def close(self) -> None:
        """Stop renewing and give back what is still held (a graceful stop has drained)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()  # don't wait for a round in progress
            await asyncio.gather(self._task, return_exceptions=True)
        for lease, user_id in list(self._held.items()):
            self.release(user_id, lease)
        with contextlib.suppress(RedisError):
            await self._round()
