"""Waiting for a condition with a deadline: the one poll loop of the test suite.

`eventually(probe, timeout=..., what=...)` calls `probe` until it returns a truthy value and
returns that value; `eventually_async` is the same for a coroutine function (or a plain
function, checked from inside the event loop). On timeout both raise an AssertionError that
names `what`, the time waited, the number of attempts and the last value returned or the last
exception raised, so a failure says what was being waited for and how far it got.

A probe that raises is retried (the thing may not be up yet: connection refused, a file not
written yet); the last exception is chained to the AssertionError. An AssertionError raised by
the probe is not retried: an assertion says something is wrong, not that it isn't ready (a
process that died, a task that failed), so it fails at once. Loops that are not "poll until
true" (load generators, readers of a stream with their own timeouts) do not belong here.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_INTERVAL = 0.05


class _Tracker:
    """The last outcome of a probe, for the timeout message."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        self.started = time.monotonic()
        self.attempts = 0
        self.last_value: object = None
        self.last_error: BaseException | None = None

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.started >= self.timeout

    def failure(self) -> AssertionError:
        if self.last_error is not None:
            last = f"last error: {self.last_error!r}"
        else:
            last = f"last value: {self.last_value!r}"
        return AssertionError(
            f"timed out after {self.timeout:g}s ({self.attempts} attempts) waiting for "
            f"{self.what}; {last}"
        )


def eventually(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = DEFAULT_INTERVAL,
    fail_fast: tuple[type[Exception], ...] = (),
) -> T:
    """Call `probe` until it returns something truthy (returned); fail after `timeout`s.

    An exception of a `fail_fast` type ends the wait at once (it is re-raised): the thing
    waited for can no longer happen (the process died)."""
    tracker = _Tracker(what, timeout)
    final: tuple[type[Exception], ...] = (AssertionError, *fail_fast)
    while True:
        tracker.attempts += 1
        try:
            value = probe()
        except final:
            raise
        except Exception as exc:  # not up yet: retried until the deadline
            tracker.last_error = exc
        else:
            tracker.last_error = None
            tracker.last_value = value
            if value:
                return value
        if tracker.expired:
            raise tracker.failure() from tracker.last_error
        time.sleep(interval)


@overload
async def eventually_async(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    interval: float = DEFAULT_INTERVAL,
    fail_fast: tuple[type[Exception], ...] = (),
) -> T: ...
@overload
async def eventually_async(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = DEFAULT_INTERVAL,
    fail_fast: tuple[type[Exception], ...] = (),
) -> T: ...
async def eventually_async(
    probe: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = DEFAULT_INTERVAL,
    fail_fast: tuple[type[Exception], ...] = (),
) -> object:
    """`eventually` for the event loop: `probe` may be a coroutine function or a plain one
    (a check of in-process state); the loop keeps running between attempts."""
    tracker = _Tracker(what, timeout)
    final: tuple[type[Exception], ...] = (AssertionError, *fail_fast)
    while True:
        tracker.attempts += 1
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except final:
            raise
        except Exception as exc:  # not up yet: retried until the deadline
            tracker.last_error = exc
        else:
            tracker.last_error = None
            tracker.last_value = value
            if value:
                return value
        if tracker.expired:
            raise tracker.failure() from tracker.last_error
        await asyncio.sleep(interval)
