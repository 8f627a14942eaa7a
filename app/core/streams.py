"""Downloads (exports, file contents) that a slow or stalled reader cannot turn against the
service (issue 13, item 3).

A stream holds no database connection while its client reads (exports fetch each batch in
a short checkout, app.exports.service; file downloads close their session before the body).
What else a stream holds, a socket, a task, an open object, is bounded here:

- a per-user cap (MAX_CONCURRENT_STREAMS_PER_USER): counted in this process always and, with
  Redis, across processes by leases (app.core.leases) under `streams:<user id>`. Past it the
  answer is 429 in the envelope with Retry-After, before any byte of the body is read.
- a write timeout (STREAM_WRITE_TIMEOUT_SECONDS): the server's `send` blocks while the socket
  buffer is full, so a client that stops reading would park the stream for ever. Past the
  timeout the stream stops and the server closes the connection (uvicorn logs that the
  response was not completed; its transport flushes what it buffered, then closes).
- a client that disconnects ends the stream at once: under ASGI 2.4 a server's `send` returns
  quietly after a disconnect, and a plain StreamingResponse would read the whole export.

The slot is taken when the response starts and given back when it ends, however it ends,
so no path between the route and the response can leak one.
"""

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.errors import AppError, error_response
from app.core.leases import Leases
from app.core.request_context import request_id_of

KEY_PREFIX = "streams:"
# A refused download is worth retrying when one of the user's others may have ended.
RETRY_AFTER_SECONDS = 5

logger = structlog.stdlib.get_logger("app.streams")


class TooManyStreams(AppError):
    status, code = 429, "rate_limited"


@dataclass(frozen=True, slots=True)
class Slot:
    user_id: int
    lease: str | None  # None: no Redis, or Redis did not answer (the local count still holds)


class StreamLimiter:
    """At most `max_per_user` streams per user: in this process, and across processes when
    `leases` (Redis) are given."""

    def __init__(
        self, *, max_per_user: int, leases: Leases | None = None, database_concurrency: int = 2
    ) -> None:
        self.max_per_user = max_per_user
        self._leases = leases
        self._local: dict[int, int] = {}
        # Held by a stream around each of its database reads (STREAM_DATABASE_CONCURRENCY):
        # streams wait for each other here, not for the pool ahead of ordinary requests.
        self.database = asyncio.Semaphore(database_concurrency)

    @classmethod
    def start(cls, settings: Settings, redis: Redis | None) -> "StreamLimiter":
        leases = None
        if redis is not None:
            leases = Leases(
                redis, key_prefix=KEY_PREFIX, lease_seconds=settings.stream_lease_seconds
            )
            leases.start()
        return cls(
            max_per_user=settings.max_concurrent_streams_per_user,
            leases=leases,
            database_concurrency=settings.stream_database_concurrency,
        )

    def active(self, user_id: int) -> int:
        """This process's streams of this user."""
        return self._local.get(user_id, 0)

    async def acquire(self, user_id: int) -> Slot | None:
        """A slot for one more stream of this user, or None at the cap."""
        if self.active(user_id) >= self.max_per_user:
            return None
        # Counted before the Redis round trip, so two requests of this process can't both
        # pass the local check while the first one waits.
        self._local[user_id] = self.active(user_id) + 1
        if self._leases is None:
            return Slot(user_id, None)
        try:
            lease = await self._leases.acquire(user_id, self.max_per_user)
        except BaseException:
            self._forget(user_id)
            raise
        if lease is None:
            self._forget(user_id)
            return None
        return Slot(user_id, lease or None)

    def release(self, slot: Slot) -> None:
        """Never waits: a lease is removed in the leases' next round."""
        self._forget(slot.user_id)
        if slot.lease is not None and self._leases is not None:
            self._leases.release(slot.user_id, slot.lease)

    def _forget(self, user_id: int) -> None:
        left = self.active(user_id) - 1
        if left > 0:
            self._local[user_id] = left
        else:
            self._local.pop(user_id, None)

    async def close(self) -> None:
        if self._leases is not None:
            await self._leases.close()


class _WriteTimedOut(Exception):
    pass


class LimitedStreamingResponse(StreamingResponse):
    """A StreamingResponse that takes one of the user's stream slots for its lifetime, gives
    up on a client that reads nothing for `write_timeout` seconds, and stops when the client
    goes away. The body iterator is closed on every path (it may hold an open file)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        limiter: StreamLimiter,
        user_id: int,
        write_timeout: float,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers, media_type=media_type)
        self._content = content
        self._limiter = limiter
        self._user_id = user_id
        self._write_timeout = write_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            slot = await self._limiter.acquire(self._user_id)
        except BaseException:
            await self._close_content()
            raise
        if slot is None:
            await self._close_content()
            await self._refuse(scope, receive, send)
            return
        try:
            await self._stream(scope, receive, send)
        finally:
            await self._close_content()
            self._limiter.release(slot)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self._limiter.max_per_user
        error = TooManyStreams(
            f"At most {limit} downloads at once per user; retry when one has finished",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
        response = error_response(
            Request(scope), status=error.status, code=error.code, message=error.message,
            headers=error.headers,
        )  # fmt: skip
        await response(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            try:
                with anyio.fail_after(self._write_timeout):
                    await send(message)
            except TimeoutError:
                raise _WriteTimedOut from None

        try:
            async with anyio.create_task_group() as group:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(until_disconnect)
                try:
                    await self.stream_response(timed_send)
                except _WriteTimedOut:
                    # Returning without the end of the body makes the server close the
                    # connection.
                    logger.warning(
                        "stream write timeout",
                        request_id=request_id_of(scope),
                        path=scope.get("path"),
                        user_id=self._user_id,
                        timeout_seconds=self._write_timeout,
                    )
                except OSError:
                    pass  # the client went away mid-write: nothing is left to answer
                group.cancel_scope.cancel()
        except BaseExceptionGroup as failed:
            # The body's own error, not wrapped: the error handlers and logs know it by type.
            if len(failed.exceptions) == 1:
                raise failed.exceptions[0] from None
            raise

    async def _close_content(self) -> None:
        close: Any = getattr(self._content, "aclose", None)
        if close is not None:
            # Shielded: a cancelled stream (client gone, shutdown) must still let go of its
            # file or database session.
            with anyio.CancelScope(shield=True):
                await close()
