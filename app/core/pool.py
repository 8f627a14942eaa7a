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
from typing import Any

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty


class FairQueue(AsyncAdaptedQueue[Any]):
    """The pool's queue of idle connections, with the checkouts that wait for one in line.

    Invariant: connections sit in the queue only while nobody waits; a returned one goes to
    the first live waiter. So a checkout may take from the queue only when no one waits."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._waiters: deque[asyncio.Future[Any]] = deque()

    def put_nowait(self, item: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that gave up (timeout, cancel) is skipped
                waiter.set_result(item)
                return
        super().put_nowait(item)  # raises Full past the pool size: the pool closes it

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)  # the pool only returns connections without blocking

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not self._waiters and not self.empty():
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
