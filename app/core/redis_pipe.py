"""A Redis client for the per-request hot path: one connection per process, every caller's
command written with the others of its event-loop turn and the replies matched to callers in
order (pipelining).

Why not redis-py here: its asyncio client checks a connection out of its pool for each command
(a lock, a health check, a non-blocking read to see the socket is clean), wraps it in a retry
and a timeout context, and returns it; under load that cost ~100 µs of CPU per command in the
API process, where the command itself is a few µs of parsing (bench/RESULTS.md: users/me spent
11% of its CPU in the rate limit's one EVALSHA). Here a command is one future, the commands of
one turn of the event loop share one write, a burst of concurrent callers shares each socket
read, and one timer per connection bounds every reply. Everything else (scripts with many keys,
SCAN, pub/sub, the broker) stays on redis-py.

Failure behaves as redis-py's did for these callers, with its exception types: a connection
that breaks or a reply later than the timeout closes the connection and fails every command
waiting on it (ConnectionError / TimeoutError); the next command connects again. Only plain TCP
URLs (`redis://`, with password and database); `from_url` returns None for others (TLS, a unix
socket), and the caller stays on redis-py.
"""

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = Any  # what hiredis makes of RESP: bytes, int, list, None, or an error instance


class _Protocol(asyncio.Protocol):
    def __init__(self, *, timeout: float, where: str) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        # Each command's caller and the time its reply is due, oldest first.
        self.waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.timeout, self.where = timeout, where
        # Commands not yet written: every command sent in one turn of the event loop goes
        # out in one write at the end of it. On loopback a write is a ~20 µs system call
        # (the kernel runs the receiving side's TCP inline), and under load several
        # requests reach their command in the same turn (bench/RESULTS.md).
        self.unsent: list[bytes] = []
        # One timer for the connection, not one per command (`asyncio.timeout` around each
        # reply cost ~9 µs a command under load): due at the oldest waiting command's time.
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, as create_connection makes (uvloop's is no asyncio.Transport
        # subclass, hence no isinstance check).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream can't be trusted
                self.close(RedisConnectionError("Redis sent a reply to no command"))
                return
            future, _ = self.waiting.popleft()
            if not future.done():  # its caller may have given up meanwhile
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(self.lost or RedisConnectionError(f"Connection to Redis lost: {exc}"))

    def send(self, packed: bytes) -> asyncio.Future[Reply]:
        if self.lost is not None or self.transport is None:
            raise self.lost or RedisConnectionError("not connected")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        due = loop.time() + self.timeout
        self.waiting.append((future, due))
        if self.watchdog is None:
            self.watchdog = loop.call_at(due, self._check_due)
        if not self.unsent:  # the turn's first command: write them all once it ends
            loop.call_soon(self._flush)
        self.unsent.append(packed)
        return future

    def _flush(self) -> None:
        unsent, self.unsent = self.unsent, []
        if self.lost is None and self.transport is not None:
            self.transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def _check_due(self) -> None:
        self.watchdog = None
        if not self.waiting or self.lost is not None:
            return
        _, due = self.waiting[0]
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            # Redis is slow or gone: what is queued behind this reply will be late too.
            self.close(RedisTimeoutError(f"Timeout reading from {self.where}"))
        else:  # that one was answered: wait for the one now oldest
            self.watchdog = loop.call_at(due, self._check_due)

    def close(self, reason: Exception) -> None:
        self._fail(reason)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, reason: Exception) -> None:
        if self.lost is None:
            self.lost = reason
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)


class PipelinedRedis:
    def __init__(
        self,
        *,
        host: str,
        port: int = 6379,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
    ) -> None:
        self.host, self.port = host, port
        self.timeout, self.connect_timeout = timeout, connect_timeout
        handshake: list[tuple[Any, ...]] = []
        if password is not None:
            handshake.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            handshake.append(("SELECT", db))
        self._handshake = handshake
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float, connect_timeout: float
    ) -> "PipelinedRedis | None":
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname or parts.query:
            return None
        path = parts.path.strip("/")
        return cls(
            host=parts.hostname,
            port=parts.port or 6379,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            db=int(path) if path else 0,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )

    async def execute(self, *args: Any) -> Reply:
        """One command's reply; an error reply is raised (ResponseError and its kinds)."""
        # `_connected` hands out a live connection and nothing awaits before the send, so the
        # send can't find it lost: a connection that broke is replaced there. One that breaks
        # before the turn's write fails the waiting commands (`_fail`).
        protocol = await self._connected()
        # A caller cancelled while waiting leaves its future in the queue: its reply, when
        # it comes, is read and dropped, keeping the others in step.
        return _checked(await protocol.send(hiredis.pack_command(args)))

    def register_script(self, script: str) -> "PipelinedScript":
        """As redis-py's `register_script`: a callable taking `keys=` and `args=`."""
        return PipelinedScript(self, script)

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close(RedisConnectionError("client closed"))
            self._protocol = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # concurrent callers share one new connection
            if self._protocol is None or self._protocol.lost is not None:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        where = f"{self.host}:{self.port}"
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(timeout=self.timeout, where=where), self.host, self.port
                )
                sent = [protocol.send(hiredis.pack_command(cmd)) for cmd in self._handshake]
                for reply in await asyncio.gather(*sent, return_exceptions=True):
                    _checked(reply)  # a wrong password is an error reply
        except BaseException as error:
            if protocol is not None:
                protocol.close(RedisConnectionError(f"handshake with {where} failed"))
            if isinstance(error, TimeoutError):
                raise RedisTimeoutError(f"Timeout connecting to {where}") from None
            if isinstance(error, OSError):
                raise RedisConnectionError(f"Error connecting to {where}: {error}") from error
            raise
        return protocol


class PipelinedScript:
    """A Lua script run by digest, loaded first where the Redis lacks it (after a restart)."""

    def __init__(self, redis: PipelinedRedis, script: str) -> None:
        self.redis, self.script = redis, script
        self.sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Reply:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self.redis.execute(*command)
        except NoScriptError:
            await self.redis.execute("SCRIPT", "LOAD", self.script)
            return await self.redis.execute(*command)


def _checked(reply: Reply) -> Reply:
    """The reply, or the error it is raised."""
    if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
        raise NoScriptError(str(reply))
    if isinstance(reply, BaseException):
        raise reply
    return reply
