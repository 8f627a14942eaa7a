import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.core.cache import Cache, MemoryCache, RedisCache, cached, stable_key
from tests.support.waiting import eventually_async


@pytest.fixture
async def cache(shared_state: str | None) -> AsyncIterator[Cache]:
    if shared_state is None:
        yield MemoryCache(max_entries=100)
        return
    redis = Redis.from_url(shared_state)
    try:
        yield RedisCache(redis, scan_batch=7)
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


async def test_memory_cache_is_bounded() -> None:
    cache = MemoryCache(max_entries=10)
    for n in range(50):
        await cache.set(f"k{n}", b"v", ttl=60)
    assert len(cache._entries) == 10
    assert await cache.get("k49") == b"v"
    assert await cache.get("k0") is None
