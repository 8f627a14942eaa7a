"""A subscriber's catch-up after a hub reconnect: stored frames after its last id, ahead of
live ones, each once. The database side runs over real sockets in
tests/system/test_realtime_reconnect.py; this pins down the ordering and de-duplication."""

import asyncio

from app.core.pubsub import InProcessHub
from app.realtime.manager import ConnectionManager, Subscriber


def _frame(frame_id: int) -> str:
    return f'{{"id": {frame_id}}}'


async def _drain(subscriber: Subscriber) -> list[int | None]:
    ids: list[int | None] = []
    while subscriber._frames:  # what is queued now, without waiting for more
        frame = await subscriber.next()
        assert frame is not None
        ids.append(frame[0])
    return ids


async def test_catch_up_comes_before_live_frames_and_nothing_twice() -> None:
    store = {n: _frame(n) for n in range(1, 8)}
    reading = asyncio.Event()
    proceed = asyncio.Event()

    async def missed(after_id: int) -> list[tuple[int, str]]:
        reading.set()
        await proceed.wait()  # live frames arrive while the database is read
        return [(n, text) for n, text in sorted(store.items()) if n > after_id]

    subscriber = Subscriber(1, 100, session_id="s")
    subscriber.offer(1, _frame(1))
    subscriber.offer(2, _frame(2))
    subscriber.follow(missed, 0)
    assert subscriber.last_id == 2
    assert await _drain(subscriber) == [1, 2]

    task = asyncio.create_task(subscriber.catch_up())
    await reading.wait()
    subscriber.offer(6, _frame(6))  # also in the store: held, then dropped as a duplicate
    subscriber.offer(None, '{"type": "typing"}')
    subscriber.offer(8, _frame(8))  # newer than the read: follows it
    proceed.set()
    assert await task == 5
    assert await _drain(subscriber) == [3, 4, 5, 6, 7, None, 8]
    assert subscriber.last_id == 8
    subscriber.offer(7, _frame(7))  # published late, after its row was read
    assert await _drain(subscriber) == []


async def test_the_manager_catches_up_every_following_subscriber_on_resubscribe() -> None:
    hub = InProcessHub()
    manager = ConnectionManager(hub, max_per_user=5, resync_concurrency=1)
    reads: list[int] = []

    async def missed(after_id: int) -> list[tuple[int, str]]:
        reads.append(after_id)
        return [(after_id + 1, _frame(after_id + 1))]

    following, plain = Subscriber(1, 10, session_id="a"), Subscriber(2, 10, session_id="b")
    for subscriber in (following, plain):
        await manager.admit(subscriber)
    following.follow(missed, 41)
    hub._announce_resubscribed()
    async with asyncio.timeout(5):
        while manager.resynced < 1:  # the catch-up runs as a task of the manager's
            await asyncio.sleep(0.005)
    assert reads == [41]
    assert await _drain(following) == [42]
    assert await _drain(plain) == []
    await manager.close()
