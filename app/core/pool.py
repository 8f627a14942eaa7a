"""The database connection pool: SQLAlchemy's asyncio queue pool, first come first served.

SQLAlchemy's asyncio pool waits for a connection in an `asyncio.Queue`. A connection given back
goes into the queue and wakes the longest waiter, but that waiter only takes it a few event
loop steps later, and any checkout that starts in between finds it there and takes it first.
The waiter then finds the queue empty and goes to the back of the line. Under load (more
requests in flight than connections, as with 32 clients on a pool of 20) a few requests lose
that race again and again: in a loop of 32 tasks on a pool of 20, checkouts waited up to
140-390 ms where first come first served kept every one under 40 ms (bench/RESULTS.md).

`FairQueue` hands a returned connection straight to the longest waiter, and a checkout that
finds others waiting queues behind them. Everything else is SQLAlchemy's pool: size,
overflow, timeout (its `TimeoutError`), pre-ping, recycle, events, invalidation.
"""

import asyncio
from collections import deque
from typing import Any, cast

from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import await_
from sqlalchemy.util.queue import Empty, Full, QueueCommon


class FairQueue(QueueCommon[Any]):
    """The pool's idle connections, and the checkouts that wait for one in line.

    Invariant: connections sit in the queue only while nobody waits; a returned one goes to
    the first live waiter. So a checkout may take from the queue only when no one waits.
    Its own deque rather than SQLAlchemy's `asyncio.Queue`, so the next connection a checkout
    would take can be looked at (`next_idle`)."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize  # 0: unbounded
        self.use_lifo = use_lifo
        self._idle: deque[Any] = deque()
        self._waiters: deque[asyncio.Future[Any]] = deque()

    def empty(self) -> bool:
        return not self._idle

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._idle)

    def qsize(self) -> int:
        return len(self._idle)

    def next_idle(self) -> Any | None:
        """What a checkout now would take without waiting, or None (none idle, or others
        wait first)."""
        if self._waiters or not self._idle:
            return None
        return self._idle[-1] if self.use_lifo else self._idle[0]

    def put_nowait(self, item: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that gave up (timeout, cancel) is skipped
                waiter.set_result(item)
                return
        if self.full():
            raise Full  # past the pool size: the pool closes it
        self._idle.append(item)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)  # the pool only returns connections without blocking

    def get_nowait(self) -> Any:
        if not self._idle:
            raise Empty
        return self._idle.pop() if self.use_lifo else self._idle.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not self._waiters and self._idle:
            return self.get_nowait()
        if not block:
            raise Empty
        return await_(self._wait(seconds=timeout))

    async def _wait(self, *, seconds: float | None) -> Any:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection just as it gave up: pass it on, or it leaks.
                self.put_nowait(waiter.result())
            else:
                waiter.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                raise Empty from error  # the pool raises its own TimeoutError for this
            raise


class FairAsyncPool(AsyncAdaptedQueuePool):
    _queue_class = FairQueue

    def next_idle(self) -> ConnectionPoolEntry | None:
        """The connection the next checkout takes without waiting, or None
        (app.core.db `_checkout`)."""
        queue = cast(FairQueue, self._pool)  # made from `_queue_class`
        record: ConnectionPoolEntry | None = queue.next_idle()
        return record
