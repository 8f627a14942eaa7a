"""The cluster-wide per-user connection cap (RT-5) on a real Redis: two `ConnectionLeases`
stand for two API processes sharing it."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.realtime.leases import KEY_PREFIX, ConnectionLeases
from tests.servers import free_port

LIMIT = 2
USER = 7


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


def process(redis: Redis, lease_seconds: float = 60.0) -> ConnectionLeases:
    leases = ConnectionLeases(redis, lease_seconds=lease_seconds)
    leases.start()
    return leases


async def eventually_acquire(leases: ConnectionLeases, within: float) -> str:
    deadline = time.monotonic() + within
    while (lease := await leases.acquire(USER, LIMIT)) is None:
        assert time.monotonic() < deadline, "no slot freed in time"
        await asyncio.sleep(0.02)  # polling another party's expiry, with a deadline
    return lease


async def test_the_cap_holds_across_processes_and_a_release_frees_a_slot(redis: Redis) -> None:
    a, b = process(redis), process(redis)
    try:
        first = await a.acquire(USER, LIMIT)
        assert first
        assert await b.acquire(USER, LIMIT)
        assert await a.acquire(USER, LIMIT) is None
        assert await b.acquire(USER, LIMIT) is None
        assert await b.acquire(USER + 1, LIMIT)  # another user's count is their own

        a.release(USER, first)  # does not wait on Redis: the next round removes it
        await eventually_acquire(b, within=5)
        assert await redis.zcard(f"{KEY_PREFIX}{USER}") == LIMIT
    finally:
        await a.close()
        await b.close()
    # A graceful close gives back every lease it held.
    assert await redis.zcard(f"{KEY_PREFIX}{USER}") == 0


async def test_leases_are_renewed_while_held_and_lapse_when_a_process_dies(
    redis: Redis,
) -> None:
    lease_seconds = 0.6
    alive = process(redis, lease_seconds)
    dying = process(redis, lease_seconds)
    other = process(redis, lease_seconds)
    try:
        assert await alive.acquire(USER, LIMIT)
        assert await dying.acquire(USER, LIMIT)
        # Held for several lease times: renewal keeps both slots taken.
        deadline = time.monotonic() + 4 * lease_seconds
        while time.monotonic() < deadline:
            assert await other.acquire(USER, LIMIT) is None
            await asyncio.sleep(0.1)
        # SIGKILL, as far as Redis can tell: renewal stops and nothing is released.
        assert dying._task is not None
        dying._task.cancel()
        started = time.monotonic()
        await eventually_acquire(other, within=5 * lease_seconds)
        assert time.monotonic() - started <= 3 * lease_seconds
        assert await other.acquire(USER, LIMIT) is None  # alive's lease is still renewed
    finally:
        await alive.close()
        await other.close()


async def test_without_redis_a_connection_is_admitted_without_a_lease() -> None:
    """Each process's own cap still holds; refusing every connection while Redis is down
    would turn a Redis outage into a realtime outage."""
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    leases = process(dead)
    try:
        assert await leases.acquire(USER, LIMIT) == ""
    finally:
        await leases.close()
        await dead.aclose()
