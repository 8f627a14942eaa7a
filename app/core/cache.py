"""Cache service: get, set, delete, invalidate by prefix, generations, and a decorator.

Two backends with the same behaviour: process memory (embedded mode) and Redis (shared by
every process). Keys are built from stable digests, never `hash()`, which differs between
processes. Redis errors never fail a request: a broken cache is a slow cache.

Read-after-write freshness: a plain delete-on-write races with a reader that loaded the old
row before the write and stores it after the delete. Namespaces therefore carry a generation
number; writers bump it after their commit, and readers build keys with the generation they
saw *before* reading the database, so a late store lands under a dead generation.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from app.core.redis import Redis, RedisError

logger = logging.getLogger("app.cache")
CachedFunction = Callable[..., Awaitable[bytes]]

# One round trip: the namespace's generation and the entry stored under it.
_GET_VERSIONED = """
local generation = redis.call('GET', KEYS[1]) or '0'
return {generation, redis.call('GET', ARGV[1] .. generation .. ':' .. ARGV[2])}
"""


def stable_key(*parts: object) -> str:
    """A key that is the same in every process and every run for the same arguments."""
    raw = json.dumps(parts, sort_keys=True, default=_plain, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(  # True when stored (or, with only_if_new, when an entry was already there)
        self, key: str, value: bytes, ttl: float, *, only_if_new: bool = False
    ) -> bool: ...
    async def delete(self, *keys: str) -> None: ...
    async def delete_prefix(self, prefix: str) -> int: ...
    async def get_versioned(self, namespace: str, key: str) -> tuple[int, bytes | None]: ...
    async def set_versioned(
        self, namespace: str, generation: int, key: str, value: bytes, ttl: float
    ) -> None: ...
    async def bump(self, namespace: str) -> None: ...
    async def close(self) -> None: ...


def _versioned_key(namespace: str, generation: int | str, key: str) -> str:
    return f"cache:{namespace}:{generation}:{key}"


class MemoryCache:
    """Bounded LRU with expiry; one process only (the embedded mode has one)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._max_entries = max_entries

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float, *, only_if_new: bool = False) -> bool:
        if only_if_new and await self.get(key) is not None:
            return True
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return True

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._entries.pop(key, None)

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        await self.delete(*doomed)
        return len(doomed)

    async def get_versioned(self, namespace: str, key: str) -> tuple[int, bytes | None]:
        generation = self._generations.get(namespace, 0)
        return generation, await self.get(_versioned_key(namespace, generation, key))

    async def set_versioned(
        self, namespace: str, generation: int, key: str, value: bytes, ttl: float
    ) -> None:
        if generation == self._generations.get(namespace, 0):
            await self.set(_versioned_key(namespace, generation, key), value, ttl)

    async def bump(self, namespace: str) -> None:
        # Entries of older generations are unreachable now; the LRU bound evicts them.
        self._generations[namespace] = self._generations.get(namespace, 0) + 1

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    def __init__(self, redis: Redis, *, scan_batch: int = 500) -> None:
        self._redis = redis
        self._scan_batch = scan_batch
        self._get_versioned = redis.register_script(_GET_VERSIONED)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(key)
        except RedisError as exc:
            logger.warning("cache get failed: %s", type(exc).__name__)
            return None
        return value if isinstance(value, bytes) or value is None else value.encode()

    async def set(self, key: str, value: bytes, ttl: float, *, only_if_new: bool = False) -> bool:
        try:
            await self._redis.set(key, value, px=max(1, int(ttl * 1000)), nx=only_if_new)
        except RedisError as exc:
            logger.warning("cache set failed: %s", type(exc).__name__)
            return False
        return True

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        try:
            await self._redis.unlink(*keys)
        except RedisError as exc:
            logger.warning("cache delete failed: %s", type(exc).__name__)

    async def delete_prefix(self, prefix: str) -> int:
        """SCAN in batches, never KEYS: KEYS blocks Redis for everyone while it walks."""
        deleted = 0
        batch: list[bytes] = []
        try:
            async for key in self._redis.scan_iter(match=_glob_escape(prefix) + "*",
                                                   count=self._scan_batch):  # fmt: skip
                batch.append(key)
                if len(batch) >= self._scan_batch:
                    deleted += await self._redis.unlink(*batch)
                    batch.clear()
            if batch:
                deleted += await self._redis.unlink(*batch)
        except RedisError as exc:
            logger.warning("cache prefix delete failed: %s", type(exc).__name__)
        return deleted

    async def get_versioned(self, namespace: str, key: str) -> tuple[int, bytes | None]:
        try:
            generation, value = await self._get_versioned(
                keys=[f"cache:{namespace}:generation"], args=[f"cache:{namespace}:", key]
            )
        except RedisError as exc:
            logger.warning("cache get failed: %s", type(exc).__name__)
            return -1, None  # -1: never stored, so a broken Redis caches nothing
        return int(generation), value

    async def set_versioned(
        self, namespace: str, generation: int, key: str, value: bytes, ttl: float
    ) -> None:
        if generation >= 0:
            await self.set(_versioned_key(namespace, generation, key), value, ttl)

    async def bump(self, namespace: str) -> None:
        try:
            await self._redis.incr(f"cache:{namespace}:generation")
        except RedisError as exc:
            # The write is committed but readers may see the old entry until its TTL ends.
            logger.error("cache generation bump failed: %s", type(exc).__name__)  # noqa: TRY400

    async def close(self) -> None:
        return None  # the Redis client belongs to the lifespan


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def cached(
    namespace: str, *, ttl: float, ignore: tuple[str, ...] = ("session",)
) -> Callable[[CachedFunction], CachedFunction]:
    """Cache an async function that returns bytes (a serialized response) by its arguments.

    The function takes keyword arguments only, one of them `cache`; the others form the key,
    except those in `ignore` (a database session is not part of what is being asked).
    `bump(namespace)` after a write retires every entry at once.
    """

    def decorate(function: CachedFunction) -> CachedFunction:
        @functools.wraps(function)
        async def wrapper(*, cache: Cache, **kwargs: Any) -> bytes:
            key_parts = {k: v for k, v in kwargs.items() if k not in ignore}
            key = stable_key(function.__qualname__, key_parts)
            generation, hit = await cache.get_versioned(namespace, key)
            if hit is not None:
                return hit
            result = await function(cache=cache, **kwargs)
            await cache.set_versioned(namespace, generation, key, result, ttl)
            return result

        return wrapper

    return decorate
