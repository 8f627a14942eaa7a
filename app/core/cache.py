"""Cache service: get, set, delete, invalidate by prefix, generations, and a decorator.

Backends with the same behaviour: process memory (`MemoryCache`, a byte-bounded LRU) and Redis
(`RedisCache`). Keys are built from stable digests, never `hash()`, which differs between
processes. Redis errors never fail a request: a broken cache is a slow cache.

Read-after-write freshness: a plain delete-on-write races with a reader that loaded the old
row before the write and stores it after the delete. Namespaces therefore carry a generation
number; writers bump it after their commit, and readers build keys with the generation they
saw *before* reading the database, so a late store lands under a dead generation.

Where things live (`build_cache`, docs/architecture.md "Redis"): the plain operations (auth
snapshots and revocation tombstones) go to the shared Redis, which never evicts. Cached
responses (the versioned operations) never do: anyone can multiply them, and on a
non-evicting instance they would fill it and block logins and the broker. They go to a
dedicated Redis run with `allkeys-lru` (CACHE_REDIS_URL), or else to process memory with only
the namespace generations in the shared Redis, so a write still retires them everywhere.

Near copies (`SplitCache`, `near=True` reads): a plain value read from the shared Redis may be
kept in process memory for NEAR_TTL (under a second, AUTH_SNAPSHOT_LOCAL_SECONDS), so the
authenticated hot path skips its round trip. Writes and deletes through this process drop the
near copy at once; writes elsewhere reach it by `forget_near` (the sessions-ended events on
the hub) or, if that event is lost, when the copy expires.

Generations start at Redis's clock (microseconds) when their key is missing and a bump never
goes below it, so a key lost to eviction or a restart never brings a number back that old
entries (in process memory, or stored late) were written under.
"""

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any, Protocol

from app.core.metrics import CACHE_LOOKUPS
from app.core.redis import Redis, RedisError
from app.core.redis_pipe import PipelinedRedis

logger = logging.getLogger("app.cache")
CachedFunction = Callable[..., Awaitable[bytes]]

# What an entry costs beyond its key and value in process memory (the dict slot, the tuple,
# the float, object headers), so a flood of tiny entries is bounded as honestly as big ones.
ENTRY_OVERHEAD_BYTES = 200

# The namespace's generation, seeded from Redis's clock when the key is missing.
_GENERATION = """
local generation = redis.call('GET', KEYS[1])
if not generation then
    local t = redis.call('TIME')
    generation = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
    redis.call('SET', KEYS[1], generation)
end
"""

# One round trip: the namespace's generation and the entry stored under it.
_GET_VERSIONED = (
    _GENERATION + "return {generation, redis.call('GET', ARGV[1] .. generation .. ':' .. ARGV[2])}"
)
_GET_GENERATION = _GENERATION + "return generation"

# Never below the clock: a generation key that was lost comes back above every number before.
_BUMP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local generation = string.format('%.0f', math.max(current + 1, now))
redis.call('SET', KEYS[1], generation)
return generation
"""


def stable_key(*parts: object) -> str:
    """A key that is the same in every process and every run for the same arguments."""
    raw = json.dumps(parts, sort_keys=True, default=_plain, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Decimal):
        return canonical_decimal(value)
    return str(value)


def canonical_decimal(value: Decimal) -> str:
    """One spelling per number: 1, 1.0, 1.00, 1e0 and -0 are each one key, not several."""
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


class Cache(Protocol):
    # near: a copy this process read from a shared store less than its near TTL ago will do
    async def get(self, key: str, *, near: bool = False) -> bytes | None: ...
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
    def forget_near(self, keys: Iterable[str] | None = None) -> None: ...  # None: all of them
    async def close(self) -> None: ...


def _versioned_key(namespace: str, generation: int | str, key: str) -> str:
    return f"cache:{namespace}:{generation}:{key}"


def _generation_key(namespace: str) -> str:
    return f"cache:{namespace}:generation"


class MemoryCache:
    """LRU with expiry, bounded in bytes (keys + values + a per-entry overhead); one process."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes, int]] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._max_bytes = max_bytes
        self.used_bytes = 0

    @staticmethod
    def entry_size(key: str, value: bytes) -> int:
        return len(key.encode()) + len(value) + ENTRY_OVERHEAD_BYTES

    async def get(self, key: str, *, near: bool = False) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value, _ = entry
        if expires < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float, *, only_if_new: bool = False) -> bool:
        if only_if_new and await self.get(key) is not None:
            return True
        self._drop(key)
        size = self.entry_size(key, value)
        if size > self._max_bytes:
            return False  # it would push out everything else and still not fit
        while self.used_bytes + size > self._max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.used_bytes -= evicted
        self._entries[key] = (time.monotonic() + ttl, value, size)
        self.used_bytes += size
        return True

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used_bytes -= entry[2]

    def __len__(self) -> int:
        return len(self._entries)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._drop(key)

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        await self.delete(*doomed)
        return len(doomed)

    async def get_versioned(self, namespace: str, key: str) -> tuple[int, bytes | None]:
        # One turn of the event loop, where Redis would have its round trip: a request served
        # from here otherwise runs start to end without yielding, and measured side by side
        # that cost 14-17% more CPU per request and a p99 3-4x higher under load (cached item
        # and list; bench/RESULTS.md, stop 24). The lone statements take the same turn.
        await asyncio.sleep(0)
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

    def forget_near(self, keys: Iterable[str] | None = None) -> None:
        """Nothing to forget: every entry is the only copy."""

    async def close(self) -> None:
        self._entries.clear()
        self.used_bytes = 0


class RedisCache:
    """Everything in one Redis: the shared one (plain operations), or the cache instance.

    `pipelined`: a client of the same Redis for the scripts every cached read and every write
    runs (app/core/redis_pipe.py: cheaper per command than redis-py); closed with `redis` when
    the cache owns the client."""

    def __init__(
        self,
        redis: Redis,
        *,
        scan_batch: int = 500,
        owns_client: bool = False,
        pipelined: PipelinedRedis | None = None,
    ) -> None:
        self._redis = redis
        self._scan_batch = scan_batch
        self._owns_client = owns_client
        self._pipelined = pipelined
        scripts: Redis | PipelinedRedis = pipelined or redis
        self._get_versioned = scripts.register_script(_GET_VERSIONED)
        self._bump = scripts.register_script(_BUMP)

    async def get(self, key: str, *, near: bool = False) -> bytes | None:
        try:
            value = await self._redis.get(key)
        except RedisError as exc:
            logger.warning("cache get failed: %s", type(exc).__name__)
            return None
        return value if isinstance(value, bytes) or value is None else value.encode()

    async def set(self, key: str, value: bytes, ttl: float, *, only_if_new: bool = False) -> bool:
        try:
            await self._redis.set(key, value, px=max(1, int(ttl * 1000)), nx=only_if_new)
        except RedisError as exc:  # an OOM refusal of a full cache instance is one of these
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
                keys=[_generation_key(namespace)], args=[f"cache:{namespace}:", key]
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
        await _bump(self._bump, namespace)

    def forget_near(self, keys: Iterable[str] | None = None) -> None:
        """No near copies here (SplitCache keeps them)."""

    async def close(self) -> None:
        if self._owns_client:  # the shared clients belong to the lifespan
            await self._redis.aclose()
            if self._pipelined is not None:
                await self._pipelined.close()


async def _bump(script: Any, namespace: str) -> None:
    try:
        await script(keys=[_generation_key(namespace)])
    except RedisError as exc:
        # The write is committed but readers may see the old entry until its TTL ends.
        logger.error("cache generation bump failed: %s", type(exc).__name__)  # noqa: TRY400


class LocalEntries:
    """Entries in this process's memory, generations in the shared Redis: a write anywhere
    retires them everywhere, and a cache hit costs one small GET there, as a Redis hit did."""

    def __init__(
        self, generations: Redis, memory: MemoryCache, *, pipelined: PipelinedRedis | None = None
    ) -> None:
        self._memory = memory
        scripts: Redis | PipelinedRedis = pipelined or generations
        self._generation = scripts.register_script(_GET_GENERATION)
        self._bump = scripts.register_script(_BUMP)

    async def get_versioned(self, namespace: str, key: str) -> tuple[int, bytes | None]:
        try:
            generation = int(await self._generation(keys=[_generation_key(namespace)]))
        except RedisError as exc:
            logger.warning("cache generation read failed: %s", type(exc).__name__)
            return -1, None  # an entry read now could be one a write elsewhere has retired
        return generation, await self._memory.get(_versioned_key(namespace, generation, key))

    async def set_versioned(
        self, namespace: str, generation: int, key: str, value: bytes, ttl: float
    ) -> None:
        if generation >= 0:
            await self._memory.set(_versioned_key(namespace, generation, key), value, ttl)

    async def bump(self, namespace: str) -> None:
        await _bump(self._bump, namespace)

    async def close(self) -> None:
        await self._memory.close()


class Responses(Protocol):
    """The versioned half of `Cache`: what `cached` uses."""

    async def get_versioned(self, namespace: str, key: str) -> tuple[int, bytes | None]: ...
    async def set_versioned(
        self, namespace: str, generation: int, key: str, value: bytes, ttl: float
    ) -> None: ...
    async def bump(self, namespace: str) -> None: ...
    async def close(self) -> None: ...


class NearCopies:
    """Values read from a shared store, kept in this process for `ttl` seconds at most.

    `epoch` counts invalidations: a read that started before one may have fetched what it
    invalidated, so its value is not kept (`put(..., since=epoch at the read's start)`)."""

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.epoch = 0
        self._entries: dict[str, tuple[float, bytes]] = {}

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, value: bytes, *, since: int) -> None:
        if since != self.epoch or self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))  # the oldest insert: FIFO is enough
        self._entries[key] = (time.monotonic() + self.ttl, value)

    def drop(self, keys: Iterable[str] | None = None) -> None:
        self.epoch += 1
        if keys is None:
            self._entries.clear()
            return
        for key in keys:
            self._entries.pop(key, None)

    def drop_prefix(self, prefix: str) -> None:
        self.drop([key for key in self._entries if key.startswith(prefix)])


class SplitCache:
    """Plain operations (auth state) to one store, cached responses to another; near copies
    of plain values read with `near=True` (module docstring)."""

    def __init__(
        self, state: Cache, responses: Responses, *, near: NearCopies | None = None
    ) -> None:
        self.state = state
        self.responses = responses
        self.near = near or NearCopies(ttl=0.0, max_entries=1)

    async def get(self, key: str, *, near: bool = False) -> bytes | None:
        if not near:
            return await self.state.get(key)
        value = self.near.get(key)
        if value is not None:
            return value
        epoch = self.near.epoch
        value = await self.state.get(key)
        if value is not None:
            self.near.put(key, value, since=epoch)
        return value

    async def set(self, key: str, value: bytes, ttl: float, *, only_if_new: bool = False) -> bool:
        self.near.drop((key,))
        try:
            return await self.state.set(key, value, ttl, only_if_new=only_if_new)
        finally:
            self.near.drop((key,))  # a read that raced the write must not keep the old value

    async def delete(self, *keys: str) -> None:
        self.near.drop(keys)
        await self.state.delete(*keys)

    async def delete_prefix(self, prefix: str) -> int:
        self.near.drop_prefix(prefix)
        return await self.state.delete_prefix(prefix)

    def forget_near(self, keys: Iterable[str] | None = None) -> None:
        self.near.drop(keys)

    async def get_versioned(self, namespace: str, key: str) -> tuple[int, bytes | None]:
        return await self.responses.get_versioned(namespace, key)

    async def set_versioned(
        self, namespace: str, generation: int, key: str, value: bytes, ttl: float
    ) -> None:
        await self.responses.set_versioned(namespace, generation, key, value, ttl)

    async def bump(self, namespace: str) -> None:
        await self.responses.bump(namespace)

    async def close(self) -> None:
        await self.responses.close()
        await self.state.close()


def build_cache(
    *,
    shared: Redis | None,
    cache_redis: Redis | None,
    memory_max_bytes: int,
    near_ttl: float = 0.0,
    near_max_entries: int = 10_000,
    pipelined_shared: PipelinedRedis | None = None,
    pipelined_cache: PipelinedRedis | None = None,
) -> Cache:
    """The process's cache for its Redis clients (module docstring: where things live).

    `cache_redis` is owned by the cache from here on (closed with it); `shared` is not.
    `near_ttl`: how long a plain value read from the shared Redis may be reused (0: never).
    `pipelined_*`: pipelined clients of the same two Redis servers for the versioned
    operations' scripts, owned as their redis-py siblings are."""
    if shared is None and cache_redis is None:
        return MemoryCache(memory_max_bytes)  # embedded: one process, one budget
    state: Cache = RedisCache(shared) if shared is not None else MemoryCache(memory_max_bytes)
    near = NearCopies(ttl=near_ttl if shared is not None else 0.0, max_entries=near_max_entries)
    if cache_redis is not None:
        responses = RedisCache(cache_redis, owns_client=True, pipelined=pipelined_cache)
        return SplitCache(state, responses, near=near)
    assert shared is not None
    local = LocalEntries(shared, MemoryCache(memory_max_bytes), pipelined=pipelined_shared)
    return SplitCache(state, local, near=near)


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _landed(
    in_flight: dict[tuple[int, str], "asyncio.Task[bytes]"],
    flight_key: tuple[int, str],
    flight: "asyncio.Task[bytes]",
) -> None:
    in_flight.pop(flight_key, None)
    if not flight.cancelled():
        flight.exception()  # retrieved: every waiter may have gone, and it is theirs to raise


def cached(
    namespace: str, *, ttl: float, ignore: tuple[str, ...] = ("session",)
) -> Callable[[CachedFunction], CachedFunction]:
    """Cache an async function that returns bytes (a serialized response) by its arguments.

    The function takes keyword arguments only, one of them `cache`; the others form the key,
    except those in `ignore` (a database session is not part of what is being asked). Pass
    validated values (parsed filters, not the query string): the key is canonical for them
    (`stable_key`), so spellings of one query share an entry and unknown parameters none.
    `bump(namespace)` after a write retires every entry at once.

    Misses are coalesced in each process: while one call computes an entry, the calls that
    miss the same key under the same generation wait for its result instead of each running
    the query (an entry expiring, or a bump, under load: 32 connections had been 32 copies
    of a listing's count at once, and that was the listing's whole p99). The computation is
    a task of its own, so a caller that goes away does not cancel it for the others. Without
    a generation (the store is down) nothing is coalesced: a call could then be answered
    with a result read before a write it came after.
    """

    def decorate(function: CachedFunction) -> CachedFunction:
        in_flight: dict[tuple[int, str], asyncio.Task[bytes]] = {}

        async def compute(cache: Cache, generation: int, key: str, kwargs: dict[str, Any]) -> bytes:
            result = await function(cache=cache, **kwargs)
            await cache.set_versioned(namespace, generation, key, result, ttl)
            return result

        @functools.wraps(function)
        async def wrapper(*, cache: Cache, **kwargs: Any) -> bytes:
            key_parts = {k: v for k, v in kwargs.items() if k not in ignore}
            key = stable_key(function.__qualname__, key_parts)
            generation, hit = await cache.get_versioned(namespace, key)
            if hit is not None:
                CACHE_LOOKUPS.labels(namespace=namespace, result="hit").inc()
                return hit
            if generation < 0:
                CACHE_LOOKUPS.labels(namespace=namespace, result="skip").inc()
                return await function(cache=cache, **kwargs)
            flight = in_flight.get((generation, key))
            if flight is None:
                CACHE_LOOKUPS.labels(namespace=namespace, result="miss").inc()
                flight = asyncio.ensure_future(compute(cache, generation, key, kwargs))
                in_flight[generation, key] = flight
                flight.add_done_callback(functools.partial(_landed, in_flight, (generation, key)))
            else:
                CACHE_LOOKUPS.labels(namespace=namespace, result="coalesced").inc()
            return await asyncio.shield(flight)

        return wrapper

    return decorate
