"""Local delivery: one hub subscription per channel per process, fanned out to subscribers.

A subscriber is one client (a WebSocket or an SSE stream) with a bounded buffer of frames to
send. Fan-out never waits on a client: a frame goes into each buffer without blocking, and a
client whose buffer is full is too slow to follow and is closed (1013, "try again later")
rather than buffered without end or allowed to hold up the others. It reconnects and catches
up from the database.

Frames travel as the exact text clients receive, so a message costs one JSON decode per
process (to read its id for de-duplication), not one per client.

Pub/sub may lose messages while the hub reconnects to Redis. Each subscriber that can catch up
(chat, notifications) keeps the highest id it was given and a way to read rows after it;
when the hub is subscribed again every such subscriber reads what it missed from the database,
in id order, ahead of the live frames that arrive meanwhile, and without those it already had.
"""

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection

from app.core.pubsub import Hub, Subscription
from app.realtime.leases import ConnectionLeases

logger = logging.getLogger("app.realtime")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403

Frame = tuple[int | None, str]  # (id for de-duplication, or None for events; the text)
# Stored frames after an id, oldest first (at most a bounded page: see service.CATCH_UP_LIMIT).
MissedFrames = Callable[[int], Awaitable[list[tuple[int, str]]]]


class TooManyConnections(Exception):
    """The user already has as many live connections as allowed (in this process, or in all
    of them when Redis holds the leases)."""


class ShuttingDown(Exception):
    """The process is stopping: new connections are refused."""


class Subscriber:
    __slots__ = ("_catching_up", "_caught_up", "_frames", "_held", "_ready", "close_code",
                 "close_reason", "closed", "last_id", "lease", "limit", "missed", "session_id",
                 "user_id")  # fmt: skip

    def __init__(self, user_id: int, limit: int, *, session_id: str) -> None:
        self.user_id = user_id
        self.session_id = session_id  # the token's `sid`: its revocation ends this connection
        self.limit = limit
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self._held: list[Frame] | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = asyncio.Event()
        self.lease: str | None = None
        # The resume point after a hub reconnect: the highest stored id queued for the client.
        self.last_id: int | None = None
        self.missed: MissedFrames | None = None
        # The ids the last catch-up queued: one published late (after its row was read) would
        # otherwise go out twice. At most one catch-up page.
        self._caught_up: frozenset[int] = frozenset()
        self._catching_up = asyncio.Lock()

    def offer(self, frame_id: int | None, text: str) -> None:
        """Queue a live frame without waiting; a full buffer closes the subscriber."""
        if self.close_code is not None:
            return
        if frame_id is not None and frame_id in self._caught_up:
            return
        buffer = self._held if self._held is not None else self._frames
        if len(buffer) >= self.limit:
            self.close(CLOSE_TRY_AGAIN_LATER, "too slow: send queue full")
            return
        buffer.append((frame_id, text))
        if buffer is self._frames:
            self._advance(frame_id)
        self._ready.set()

    def _advance(self, frame_id: int | None) -> None:
        if frame_id is not None and (self.last_id is None or frame_id > self.last_id):
            self.last_id = frame_id

    def hold(self) -> None:
        """Keep live frames aside while the missed ones are read from the database."""
        self._held = []

    def put_missed(self, frame_id: int, text: str) -> None:
        """A frame read from the database: its own bound (the catch-up limit), not the live one."""
        if self.close_code is not None:
            return
        self._frames.append((frame_id, text))
        self._advance(frame_id)
        self._ready.set()

    def release(self, already_sent: set[int]) -> None:
        """Live frames held during catch-up follow it, minus those the catch-up had."""
        held, self._held = self._held or [], None
        if already_sent:
            self._caught_up = frozenset(already_sent)
        for frame_id, text in held:
            self.offer(frame_id, text)

    def follow(self, missed: MissedFrames, after_id: int) -> None:
        """Catch up from `after_id` with `missed` whenever live frames may have been lost."""
        self.missed = missed
        if self.last_id is None or after_id > self.last_id:
            self.last_id = after_id

    async def catch_up(self) -> int:
        """Queue the stored frames after `last_id`, ahead of the live ones that arrive
        meanwhile (held, then released minus duplicates); how many were queued."""
        async with self._catching_up:
            if self.missed is None or self.last_id is None or self.close_code is not None:
                self.release(set())
                return 0
            if self._held is None:
                self.hold()
            sent: set[int] = set()
            try:
                for frame_id, text in await self.missed(self.last_id):
                    if frame_id not in self._caught_up:
                        self.put_missed(frame_id, text)
                    sent.add(frame_id)
            finally:
                self.release(sent)
            return len(sent)

    async def next(self) -> Frame | None:
        """The next frame to send, or None once the subscriber is closed."""
        while not self._frames:
            if self.close_code is not None:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.close_code is not None:
            return None
        return self._frames.popleft()

    def close(self, code: int, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._frames.clear()
            self._ready.set()
            self.closed.set()


class _Channel:
    __slots__ = ("members", "subscription", "task")

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.members: set[Subscriber] = set()
        self.task: asyncio.Task[None] | None = None


class ConnectionManager:
    def __init__(
        self,
        hub: Hub,
        *,
        max_per_user: int,
        leases: ConnectionLeases | None = None,
        resync_concurrency: int = 4,
    ) -> None:
        self.hub = hub
        self.max_per_user = max_per_user
        self.leases = leases
        self.stopping = asyncio.Event()
        self._resync_slots = asyncio.Semaphore(resync_concurrency)
        self._resyncs: set[asyncio.Task[None]] = set()
        self.resynced = 0  # catch-ups run after hub reconnects (for tests and operators)
        hub.on_resubscribed(self.resync)
        self._channels: dict[str, _Channel] = {}
        self._per_user: dict[int, set[Subscriber]] = {}
        self._subscribers: set[Subscriber] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def count(self) -> int:
        return len(self._subscribers)

    async def admit(self, subscriber: Subscriber) -> None:
        """Register, within this process's cap and then, with Redis, the cluster's."""
        self.register(subscriber)
        if self.leases is None:
            return
        lease = await self.leases.acquire(subscriber.user_id, self.max_per_user)
        if lease is None:
            self.unregister(subscriber)
            raise TooManyConnections()
        subscriber.lease = lease or None  # "": admitted without one while Redis is down

    def register(self, subscriber: Subscriber) -> None:
        if self.stopping.is_set():
            raise ShuttingDown()
        own = self._per_user.setdefault(subscriber.user_id, set())
        if len(own) >= self.max_per_user:
            raise TooManyConnections()
        own.add(subscriber)
        self._subscribers.add(subscriber)
        self._empty.clear()

    def unregister(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.discard(subscriber)
            if subscriber.lease is not None and self.leases is not None:
                self.leases.release(subscriber.user_id, subscriber.lease)
                subscriber.lease = None
            own = self._per_user[subscriber.user_id]
            own.discard(subscriber)
            if not own:
                del self._per_user[subscriber.user_id]
        if not self._subscribers:
            self._empty.set()

    async def join(self, subscriber: Subscriber, channel: str) -> None:
        existing = self._channels.get(channel)
        if existing is None:
            # Attached before anything is read from the database, so nothing published after
            # the catch-up query can fall between the two.
            subscription = self.hub.subscribe(channel)
            existing = self._channels[channel] = _Channel(subscription)
            await subscription.__aenter__()
            existing.task = asyncio.create_task(self._pump(existing), name=f"pump {channel}")
        existing.members.add(subscriber)

    def leave(self, subscriber: Subscriber, channel: str) -> None:
        existing = self._channels.get(channel)
        if existing is None:
            return
        existing.members.discard(subscriber)
        if not existing.members:
            del self._channels[channel]
            if existing.task is not None:
                existing.task.cancel()

    def end_sessions(
        self, user_id: int, session_ids: Collection[str] | None, code: int, reason: str
    ) -> int:
        """Close the user's connections that hold one of these sessions (None: all of them);
        how many were closed. Their endpoints send the close code or end the stream."""
        ended = 0
        for subscriber in tuple(self._per_user.get(user_id, ())):
            if session_ids is None or subscriber.session_id in session_ids:
                if subscriber.close_code is None:
                    ended += 1
                subscriber.close(code, reason)
        return ended

    def live_sessions(self) -> set[tuple[int, str]]:
        """(user id, session id) of every open connection, each once."""
        return {(s.user_id, s.session_id) for s in self._subscribers if s.close_code is None}

    def members(self, channel: str) -> int:
        existing = self._channels.get(channel)
        return len(existing.members) if existing is not None else 0

    async def _pump(self, channel: _Channel) -> None:
        try:
            while True:
                raw = await channel.subscription.get()
                text = raw.decode()
                frame_id = _frame_id(text)
                # No copy of the set: offer() never awaits and never leaves a channel.
                for member in channel.members:
                    member.offer(frame_id, text)
        finally:
            await channel.subscription.__aexit__(None, None, None)

    def resync(self) -> None:
        """The hub is subscribed again after a loss: every subscriber that can catch up reads
        what was published meanwhile from the database (a few reads at a time)."""
        for subscriber in tuple(self._subscribers):
            if subscriber.missed is not None and subscriber.close_code is None:
                task = asyncio.create_task(self._resync_one(subscriber), name="realtime resync")
                self._resyncs.add(task)
                task.add_done_callback(self._resyncs.discard)

    async def _resync_one(self, subscriber: Subscriber) -> None:
        async with self._resync_slots:
            if subscriber.close_code is not None:
                return
            try:
                found = await subscriber.catch_up()
            except Exception as exc:  # the database is down too: the client resumes itself
                logger.warning("catch-up after hub reconnect failed: %s", exc)
                subscriber.close(CLOSE_TRY_AGAIN_LATER, "missed messages unavailable; reconnect")
                return
            self.resynced += 1
            if found:
                logger.info("caught up %d frames after hub reconnect", found)

    def stop(self) -> None:
        """Close every subscriber with 1001 and refuse new ones (graceful shutdown)."""
        self.stopping.set()
        for subscriber in tuple(self._subscribers):
            subscriber.close(CLOSE_GOING_AWAY, "server shutting down")

    async def wait_empty(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._empty.wait()
        return self._empty.is_set()

    async def close(self) -> None:
        self.stop()
        tasks = [c.task for c in self._channels.values() if c.task is not None]
        tasks += self._resyncs
        self._channels.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _frame_id(text: str) -> int | None:
    """Stored messages and notifications carry their row id; events (join, typing) do not."""
    try:
        value = json.loads(text).get("id")
    except (ValueError, AttributeError):
        logger.warning("hub frame is not a JSON object; delivered as is")
        return None
    return value if isinstance(value, int) else None
