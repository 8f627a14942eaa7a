import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.core.cache import (
    Cache,
    LocalEntries,
    MemoryCache,
    NearCopies,
    RedisCache,
    SplitCache,
    build_cache,
    cached,
    stable_key,
)
from app.core.redis import create_pipelined
from tests.support.waiting import eventually_async


@pytest.fixture(params=["memory", "redis", "redis-pipelined", "process-entries"])
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """In-process; all in one Redis (its scripts through redis-py, or through the pipelined
    client as the app runs them); entries in process memory with generations in Redis (the
    pipelined client, as the app runs them)."""
    if request.param == "memory":
        return request.param, None
    url: str = request.getfixturevalue("redis_url")
    return request.param, url


@pytest.fixture
async def cache(backend_kind: tuple[str, str | None]) -> AsyncIterator[Cache]:
    kind, url = backend_kind
    if url is None:
        yield MemoryCache(max_bytes=1024 * 1024)
        return
    redis = Redis.from_url(url)
    try:
        if kind == "redis":
            yield RedisCache(redis, scan_batch=7)
        elif kind == "redis-pipelined":
            # Owning both clients, as the cache instance's RedisCache does: closed with it.
            owner = Redis.from_url(url)
            cache = RedisCache(owner, scan_batch=7, owns_client=True,
                               pipelined=create_pipelined(url))  # fmt: skip
            yield cache
            await cache.close()
        else:
            pipelined = create_pipelined(url)
            assert pipelined is not None
            state = RedisCache(redis, scan_batch=7)
            memory = MemoryCache(max_bytes=1024 * 1024)
            yield SplitCache(state, LocalEntries(redis, memory, pipelined=pipelined))
            await pipelined.close()
    finally:
        await redis.aclose()


async def test_get_set_delete_and_expiry(cache: Cache) -> None:
    assert await cache.get("k") is None
    await cache.set("k", b"v", ttl=60)
    assert await cache.get("k") == b"v"
    await cache.set("k", b"other", ttl=60, only_if_new=True)
    assert await cache.get("k") == b"v"
    await cache.delete("k")
    assert await cache.get("k") is None
    await cache.set("short", b"v", ttl=0.01)

    async def expired() -> bool:  # waiting for the clock, not for work
        return await cache.get("short") is None

    await eventually_async(expired, timeout=2, interval=0.005, what="the entry to expire")


async def test_delete_prefix_takes_only_that_prefix(cache: Cache) -> None:
    for n in range(30):  # more than one SCAN batch
        await cache.set(f"users:{n}", b"u", ttl=60)
    await cache.set("users*x", b"glob", ttl=60)
    await cache.set("items:1", b"i", ttl=60)
    assert await cache.delete_prefix("users:") == 30
    assert await cache.get("users:3") is None
    assert await cache.get("users*x") == b"glob"  # glob characters are literal
    assert await cache.get("items:1") == b"i"


async def test_generation_bump_retires_a_namespace(cache: Cache) -> None:
    generation, hit = await cache.get_versioned("ns", "key")
    assert hit is None
    await cache.set_versioned("ns", generation, "key", b"old", ttl=60)
    assert await cache.get_versioned("ns", "key") == (generation, b"old")
    await cache.bump("ns")
    new_generation, hit = await cache.get_versioned("ns", "key")
    assert hit is None
    assert new_generation != generation


async def test_a_late_store_from_before_a_write_is_never_served(cache: Cache) -> None:
    # A reader sees generation g and reads the old row; a writer commits and bumps; the
    # reader then stores what it read. Readers after the write must not get that old value.
    generation, _ = await cache.get_versioned("items", "item:1")
    await cache.bump("items")  # the write
    await cache.set_versioned("items", generation, "item:1", b"stale", ttl=60)
    assert (await cache.get_versioned("items", "item:1"))[1] is None


async def test_cached_decorator_caches_by_arguments(cache: Cache) -> None:
    calls: list[int] = []

    @cached("demo", ttl=60)
    async def square(*, cache: Cache, session: object, n: int) -> bytes:
        calls.append(n)
        return str(n * n).encode()

    assert await square(cache=cache, session=object(), n=3) == b"9"
    assert await square(cache=cache, session=object(), n=3) == b"9"  # the session is no key
    assert await square(cache=cache, session=None, n=4) == b"16"
    assert calls == [3, 4]
    await cache.bump("demo")
    await square(cache=cache, session=None, n=3)
    assert calls == [3, 4, 3]


class _Gated:
    """A cached computation that runs only when released, counting its runs, under a namespace
    of its own (the lookup counters are per process)."""

    def __init__(self) -> None:
        self.namespace = f"flights-{uuid.uuid4().hex}"
        self.runs = 0
        self.release = asyncio.Event()
        self.fail = False

        @cached(self.namespace, ttl=60)
        async def compute(*, cache: Cache, n: int) -> bytes:
            self.runs += 1
            run = self.runs
            await self.release.wait()
            if self.fail:
                raise RuntimeError("the query failed")
            return f"{n}:{run}".encode()

        self._compute = compute

    async def compute(self, *, cache: Cache, n: int) -> bytes:
        return await self._compute(cache=cache, n=n)

    def coalesced(self) -> float:
        labels = {"namespace": self.namespace, "result": "coalesced"}
        return REGISTRY.get_sample_value("cache_lookups_total", labels) or 0.0


async def test_concurrent_misses_of_one_entry_run_one_computation(cache: Cache) -> None:
    gated = _Gated()
    calls = [asyncio.create_task(gated.compute(cache=cache, n=1)) for _ in range(20)]
    await eventually_async(lambda: gated.coalesced() == 19, timeout=5, what="19 calls waiting")
    gated.release.set()
    assert set(await asyncio.gather(*calls)) == {b"1:1"}
    assert gated.runs == 1
    assert await gated.compute(cache=cache, n=1) == b"1:1"  # and it was stored


async def test_a_caller_that_goes_away_does_not_cancel_the_others(cache: Cache) -> None:
    gated = _Gated()
    first = asyncio.create_task(gated.compute(cache=cache, n=2))
    await eventually_async(lambda: gated.runs == 1, timeout=5, what="the computation")
    second = asyncio.create_task(gated.compute(cache=cache, n=2))
    await eventually_async(lambda: gated.coalesced() == 1, timeout=5, what="a second caller")
    first.cancel()
    gated.release.set()
    assert await second == b"2:1"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_miss_after_a_write_does_not_wait_for_a_computation_from_before(
    cache: Cache,
) -> None:
    gated = _Gated()
    before = asyncio.create_task(gated.compute(cache=cache, n=3))
    await eventually_async(lambda: gated.runs == 1, timeout=5, what="the computation")
    await cache.bump(gated.namespace)  # a write committed meanwhile
    after = asyncio.create_task(gated.compute(cache=cache, n=3))
    await eventually_async(lambda: gated.runs == 2, timeout=5, what="a computation of its own")
    gated.release.set()
    assert await after == b"3:2"
    assert await before == b"3:1"  # answered, but stored under the retired generation
    assert await gated.compute(cache=cache, n=3) == b"3:2"


async def test_a_failed_computation_fails_its_waiters_and_is_not_kept(cache: Cache) -> None:
    gated = _Gated()
    gated.fail = True
    calls = [asyncio.create_task(gated.compute(cache=cache, n=4)) for _ in range(3)]
    await eventually_async(lambda: gated.coalesced() == 2, timeout=5, what="2 calls waiting")
    gated.release.set()
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(outcome, RuntimeError)
    gated.fail = False
    assert await gated.compute(cache=cache, n=4) == b"4:2"  # computed again, not a stale flight


def test_stable_keys_do_not_depend_on_the_process() -> None:
    # hash() of a str is salted per process; the same key must come out of every worker.
    code = "from app.core.cache import stable_key; print(stable_key('f', {'a': 1, 'b': 'x'}))"
    keys = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert keys == {stable_key("f", {"b": "x", "a": 1})}


async def test_memory_cache_is_bounded_in_bytes() -> None:
    cache = MemoryCache(max_bytes=10 * MemoryCache.entry_size("k00", b"v"))
    for n in range(50):
        await cache.set(f"k{n:02}", b"v", ttl=60)
    assert len(cache) == 10
    assert await cache.get("k49") == b"v"
    assert await cache.get("k00") is None


async def test_memory_cache_never_exceeds_its_byte_budget() -> None:
    """Property-style: varied sizes, overwrites, deletes and expiries, checked at every step."""
    rng = random.Random(1313)
    budget = 64 * 1024
    cache = MemoryCache(max_bytes=budget)
    live: dict[str, bytes] = {}
    for step in range(5000):
        key = f"k{rng.randrange(400)}" + "x" * rng.randrange(0, 200)
        action = rng.random()
        if action < 0.8:
            value = os.urandom(rng.choice([0, 1, 10, 100, 1000, 5000, 20_000, budget + 1]))
            stored = await cache.set(key, value, ttl=rng.choice([60.0, 0.0]))
            if stored:
                live[key] = value
            else:
                assert MemoryCache.entry_size(key, value) > budget
                live.pop(key, None)
        elif action < 0.9:
            await cache.delete(key)
            live.pop(key, None)
        else:
            found = await cache.get(key)
            assert found is None or found == live.get(key)
        assert cache.used_bytes <= budget, step
        assert cache.used_bytes == sum(
            MemoryCache.entry_size(k, v) for k, (_, v, _) in cache._entries.items()
        )


@pytest.mark.parametrize("spellings", [["1", "1.0", "1.00", "1e0", "0.1e1"], ["0", "-0", "0.00"]])
def test_equal_decimals_give_one_key(spellings: list[str]) -> None:
    assert len({stable_key("f", {"price": Decimal(s)}) for s in spellings}) == 1
    assert stable_key("f", {"price": Decimal("10")}) != stable_key("f", {"price": Decimal("1")})


@pytest.mark.parametrize("backend_kind", ["redis", "process-entries"], indirect=True)
async def test_a_lost_generation_never_comes_back_lower(
    cache: Cache, backend_kind: tuple[str, str | None]
) -> None:
    """Evicted (cache instance) or lost (restart) generation keys: entries written under an
    old number, in Redis or in process memory, must stay unreachable."""
    url = backend_kind[1]
    assert url is not None
    generation, _ = await cache.get_versioned("ns", "key")
    await cache.set_versioned("ns", generation, "key", b"old", ttl=60)
    redis = Redis.from_url(url)
    try:
        for _ in range(3):
            await redis.delete("cache:ns:generation")  # evicted by allkeys-lru, or a restart
            fresh, hit = await cache.get_versioned("ns", "key")
            assert hit is None
            assert fresh > generation
            await cache.bump("ns")
            bumped, _ = await cache.get_versioned("ns", "key")
            assert bumped > fresh
            generation = bumped
    finally:
        await redis.aclose()


class _RacingState(MemoryCache):
    """A store whose reads let something happen while they are on the wire."""

    def __init__(self) -> None:
        super().__init__(max_bytes=1024 * 1024)
        self.on_get: list[Callable[[], None]] = []

    async def get(self, key: str, *, near: bool = False) -> bytes | None:
        value = await super().get(key)
        while self.on_get:
            self.on_get.pop()()
        return value


def _near_split(ttl: float) -> tuple[SplitCache, _RacingState]:
    state = _RacingState()
    # The responses half is unused here: near copies are of plain operations only.
    split = SplitCache(state, MemoryCache(max_bytes=1024), near=NearCopies(ttl=ttl, max_entries=2))
    return split, state


async def test_near_copies_are_reused_until_forgotten_or_expired() -> None:
    """Another process's write (the state changed behind this cache) shows at once when its
    event arrives (`forget_near`), else when the copy expires; plain reads never use copies."""
    split, state = _near_split(ttl=0.2)
    await split.set("k", b"live", ttl=60)
    assert await split.get("k", near=True) == b"live"
    await state.set("k", b"revoked", ttl=60)  # written by another process
    assert await split.get("k", near=True) == b"live"
    assert await split.get("k") == b"revoked"
    split.forget_near(["k"])
    assert await split.get("k", near=True) == b"revoked"
    await state.set("k", b"other", ttl=60)
    await eventually_async(
        lambda: _near_is(split, "k", b"other"), timeout=5, what="the near copy to expire"
    )
    await state.set("j", b"x", ttl=60)
    assert await split.get("j", near=True) == b"x"
    await state.set("j", b"y", ttl=60)
    split.forget_near()  # all of them (events lost while the hub reconnected)
    assert await split.get("j", near=True) == b"y"


async def _near_is(split: SplitCache, key: str, value: bytes) -> bool:
    return await split.get(key, near=True) == value


async def test_writes_through_this_process_drop_near_copies_at_once() -> None:
    split, _ = _near_split(ttl=60)
    await split.set("auth:a", b"live", ttl=60)
    assert await split.get("auth:a", near=True) == b"live"
    await split.set("auth:a", b"revoked", ttl=60)
    assert await split.get("auth:a", near=True) == b"revoked"
    await split.delete("auth:a")
    assert await split.get("auth:a", near=True) is None
    await split.set("auth:b", b"live", ttl=60)
    assert await split.get("auth:b", near=True) == b"live"
    await split.delete_prefix("auth:")
    assert await split.get("auth:b", near=True) is None
    for key in ("c", "d", "e"):  # bounded: max_entries=2, the oldest copy goes first
        await split.set(key, key.encode(), ttl=60)
        await split.get(key, near=True)
    assert len(split.near._entries) == 2


async def test_a_read_that_raced_an_invalidation_is_not_kept() -> None:
    """The value came back from Redis after the event that retired it: serve it to that one
    request (it was current when read) but keep no copy of it."""
    split, state = _near_split(ttl=60)
    await state.set("k", b"live", ttl=60)

    def revoked_meanwhile() -> None:
        state._entries["k"] = (time.monotonic() + 60, b"revoked", 0)
        split.forget_near(["k"])

    state.on_get.append(revoked_meanwhile)
    assert await split.get("k", near=True) == b"live"
    assert await split.get("k", near=True) == b"revoked"


async def test_near_copies_are_off_without_a_shared_redis() -> None:
    assert isinstance(build_cache(shared=None, cache_redis=None, memory_max_bytes=1 << 20,
                                  near_ttl=0.5), MemoryCache)  # fmt: skip
