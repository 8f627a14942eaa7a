import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from app.core.pubsub import QUEUE_SIZE, Hub, RedisHub, create_hub
from tests.support.servers import RedisServer, running
from tests.support.waiting import eventually_async


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Waiting on another task or process."""
    await eventually_async(condition, timeout=timeout, interval=0.01, what="the hub's state")


@pytest.fixture
async def hubs(shared_state: str | None) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two hubs as two API processes would have them (one shared in embedded mode)."""
    first = create_hub(shared_state)
    second = create_hub(shared_state) if shared_state else first
    for hub in {id(first): first, id(second): second}.values():
        if isinstance(hub, RedisHub):
            await asyncio.wait_for(hub.connected.wait(), 5)
    try:
        yield first, second
    finally:
        await first.close()
        if second is not first:
            await second.close()


async def test_publish_reaches_every_subscriber_of_the_channel(hubs: tuple[Hub, Hub]) -> None:
    publisher, other_process = hubs
    async with (
        other_process.subscribe("room:1") as far,
        publisher.subscribe("room:1") as near,
        publisher.subscribe("room:2") as elsewhere,
    ):
        for n in range(3):
            await publisher.publish("room:1", f"m{n}".encode())
        assert [await asyncio.wait_for(far.get(), 5) for _ in range(3)] == [b"m0", b"m1", b"m2"]
        assert [await asyncio.wait_for(near.get(), 5) for _ in range(3)] == [b"m0", b"m1", b"m2"]
        assert elsewhere.queue.empty()


async def test_a_slow_subscriber_loses_its_oldest_not_the_others(hubs: tuple[Hub, Hub]) -> None:
    publisher, _ = hubs
    async with publisher.subscribe("busy") as slow, publisher.subscribe("busy") as fast:
        received: list[bytes] = []
        for n in range(QUEUE_SIZE + 10):
            await publisher.publish("busy", str(n).encode())
            received.append(await asyncio.wait_for(fast.get(), 5))
        await until(lambda: slow.dropped == 10)
        assert len(received) == QUEUE_SIZE + 10
        assert slow.queue.get_nowait() == b"10"  # 0..9 were dropped


async def test_redis_hub_reconnects_by_itself() -> None:
    with running(RedisServer(), "redis-server") as server:
        await _reconnect_scenario(server)


async def _reconnect_scenario(server: RedisServer) -> None:
    hub = create_hub(server.url)
    assert isinstance(hub, RedisHub)
    resubscribed: list[bool] = []
    hub.on_resubscribed(lambda: resubscribed.append(hub.connected.is_set()))
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        assert resubscribed == []  # the first subscribe lost nothing
        async with hub.subscribe("c") as subscription:
            server.kill()
            await until(lambda: not hub.connected.is_set())
            server.revive()
            await asyncio.wait_for(hub.connected.wait(), 10)
            assert hub.reconnects >= 1
            # Told once, when subscribed again: consumers catch up from their stores then.
            assert resubscribed == [True]
            await hub.publish("c", b"after")
            assert await asyncio.wait_for(subscription.get(), 5) == b"after"
    finally:
        await hub.close()
