"""The cluster-wide per-user connection cap (RT-5) on a real Redis: two `ConnectionLeases`
stand for two API processes sharing it."""

import asyncio
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.realtime.leases import KEY_PREFIX, ConnectionLeases
from tests.support.processes import free_port
from tests.support.waiting import eventually_async

LIMIT = 2
ROOT = Path(__file__).resolve().parents[2]
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
    # Polling another party's expiry.
    lease: str = await eventually_async(
        lambda: leases.acquire(USER, LIMIT), timeout=within, interval=0.02, what="a freed slot"
    )
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
    # A graceful close gives back every lease it held, for every user (the leases last a
    # minute here: only an explicit release can have emptied the sets).
    assert await redis.zcard(f"{KEY_PREFIX}{USER}") == 0
    assert await redis.zcard(f"{KEY_PREFIX}{USER + 1}") == 0


# Another API process, as far as leases go: takes one lease, prints it, renews until killed.
HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from redis.asyncio import Redis
    from app.realtime.leases import ConnectionLeases

    async def main() -> None:
        leases = ConnectionLeases(Redis.from_url(sys.argv[1]), lease_seconds=float(sys.argv[2]))
        leases.start()
        print(await leases.acquire(int(sys.argv[3]), int(sys.argv[4])), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_leases_are_renewed_while_held_and_lapse_when_a_process_is_killed(
    redis: Redis, redis_url: str
) -> None:
    lease_seconds = 0.6
    alive = process(redis, lease_seconds)
    other = process(redis, lease_seconds)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, redis_url, str(lease_seconds), str(USER), str(LIMIT),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert await alive.acquire(USER, LIMIT)
        assert holder.stdout is not None
        async with asyncio.timeout(30):
            held = (await holder.stdout.readline()).decode().strip()
        assert held.startswith(socket.gethostname()), held
        # Held for several lease times: both processes' renewals keep both slots taken.
        deadline = time.monotonic() + 4 * lease_seconds
        while time.monotonic() < deadline:
            assert await other.acquire(USER, LIMIT) is None
            await asyncio.sleep(0.1)

        holder.kill()  # SIGKILL: no release, no goodbye
        await holder.wait()
        await eventually_acquire(other, within=10)
        assert await redis.zscore(f"{KEY_PREFIX}{USER}", held) is None
        assert await other.acquire(USER, LIMIT) is None  # alive's lease is still renewed
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await alive.close()
        await other.close()


async def test_close_stops_renewing_and_gives_every_lease_back(redis: Redis) -> None:
    # A minute-long lease: the sets can only be empty after close if close released them.
    leases = process(redis, lease_seconds=60)
    assert await leases.acquire(USER, LIMIT)
    assert await leases.acquire(USER, LIMIT)
    assert await leases.acquire(USER + 1, LIMIT)
    assert await redis.zcard(f"{KEY_PREFIX}{USER}") == 2
    async with asyncio.timeout(5):
        await leases.close()
    assert leases._task is not None
    assert leases._task.done()
    assert await redis.zcard(f"{KEY_PREFIX}{USER}") == 0
    assert await redis.zcard(f"{KEY_PREFIX}{USER + 1}") == 0


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
