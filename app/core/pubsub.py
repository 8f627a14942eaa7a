"""The hub: publish a message on a channel, and every subscriber in every process gets it.

In embedded mode it is in-process fan-out. With Redis, each process holds one pub/sub
connection (no socket timeout: it is idle most of the time) read by a background task that
reconnects with backoff and re-subscribes by itself, and fans messages out to local
subscribers. Pub/sub delivers at most once: a message published while a process is
reconnecting is lost to it, so consumers that must not miss anything (chat messages,
notifications) register with `on_resubscribed` and read what they missed from the database
once the subscription is back; `reconnects` counts the losses.

Each local subscriber has a bounded queue: a subscriber that stops reading loses its oldest
messages instead of growing without end or holding up the others.
"""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("app.pubsub")
QUEUE_SIZE = 256
HUB_PREFIX = "hub:"  # Redis channel prefix: every API process and publisher agree on it


class Hub(Protocol):
    reconnects: int

    async def publish(self, channel: str, message: bytes) -> None: ...
    def subscribe(self, channel: str) -> "Subscription": ...
    def on_resubscribed(self, callback: Callable[[], None]) -> None: ...
    async def close(self) -> None: ...


class Subscription:
    def __init__(self, hub: "_LocalFanout", channel: str) -> None:
        self._hub = hub
        self.channel = channel
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0

    async def __aenter__(self) -> "Subscription":
        await self._hub._attach(self)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._hub._detach(self)

    def offer(self, message: bytes) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # drop the oldest: a slow reader must not stall the hub
            self.dropped += 1
        self.queue.put_nowait(message)

    async def get(self) -> bytes:
        return await self.queue.get()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.queue.get()


class _LocalFanout:
    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self.reconnects = 0
        self._resubscribed: list[Callable[[], None]] = []

    def subscribe(self, channel: str) -> Subscription:
        return Subscription(self, channel)

    def on_resubscribed(self, callback: Callable[[], None]) -> None:
        """Call `callback` (it must not block) each time the subscription is back after a
        loss: whatever was published meanwhile never reached this process."""
        self._resubscribed.append(callback)

    def _announce_resubscribed(self) -> None:
        for callback in self._resubscribed:
            try:
                callback()
            except Exception:  # one consumer's bug must not stop the listener
                logger.exception("hub resubscribe callback failed")

    def _deliver(self, channel: str, message: bytes) -> None:
        for subscription in tuple(self._subscribers.get(channel, ())):
            subscription.offer(message)

    async def _attach(self, subscription: Subscription) -> None:
        self._subscribers[subscription.channel].add(subscription)

    async def _detach(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.channel]


class InProcessHub(_LocalFanout):
    async def publish(self, channel: str, message: bytes) -> None:
        self._deliver(channel, message)

    async def close(self) -> None:
        self._subscribers.clear()


class RedisHub(_LocalFanout):
    def __init__(self, url: str, *, prefix: str = HUB_PREFIX) -> None:
        super().__init__()
        self._prefix = prefix
        self._publisher = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        # The listener waits for messages indefinitely: a read timeout would only kill it.
        self._listener_client = Redis.from_url(url, socket_timeout=None, socket_connect_timeout=2)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._lost = False  # since the last subscribe: messages may have been missed

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="redis-hub-listener")

    async def publish(self, channel: str, message: bytes) -> None:
        await self._publisher.publish(self._prefix + channel, message)

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.connected.clear()
                self._lost = True
                logger.warning("hub lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self.reconnects += 1
            else:
                backoff = 0.1

    async def _listen_once(self) -> None:
        async with self._listener_client.pubsub(ignore_subscribe_messages=True) as pubsub:
            # A pattern subscription covers every channel, so joining a channel needs no
            # round trip and nothing is missed between a subscriber arriving and SUBSCRIBE.
            await pubsub.psubscribe(self._prefix + "*")
            self.connected.set()
            if self._lost:
                self._lost = False
                logger.info("hub subscribed to Redis again")
                self._announce_resubscribed()
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None or message["type"] != "pmessage":
                    continue
                channel = message["channel"].decode().removeprefix(self._prefix)
                self._deliver(channel, message["data"])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._listener_client.aclose()
        await self._publisher.aclose()
        self._subscribers.clear()


class Publisher(Protocol):
    """What a process that only sends (a Celery worker, a script) needs of the hub."""

    async def publish(self, channel: str, message: bytes) -> None: ...
    async def close(self) -> None: ...


class RedisPublisher:
    """Publishes into the API processes' hubs from a process that has no hub of its own."""

    def __init__(self, url: str, *, prefix: str = HUB_PREFIX) -> None:
        self._prefix = prefix
        self._client = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def publish(self, channel: str, message: bytes) -> None:
        await self._client.publish(self._prefix + channel, message)

    async def close(self) -> None:
        await self._client.aclose()


def create_publisher(redis_url: str | None) -> Publisher | None:
    """A publisher for another process, or None in embedded mode: there the API's in-process
    hub can't be reached from outside, and the API relays what it finds in the database."""
    return RedisPublisher(redis_url) if redis_url is not None else None


def create_hub(redis_url: str | None) -> Hub:
    if redis_url is None:
        return InProcessHub()
    hub = RedisHub(redis_url)
    hub.start()
    return hub
