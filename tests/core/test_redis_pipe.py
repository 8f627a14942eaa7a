"""The pipelined Redis client (app/core/redis_pipe.py) on real redis-servers: concurrent callers
each get their own reply, a caller that gives up doesn't shift the others' replies, and the
failures behave as redis-py's did for the rate limiter (a dead or silent server fails fast with
redis-py's exception types, and the client connects again once the server is back)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
import uvloop
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.redis_pipe import PipelinedRedis
from tests.support.servers import RedisServer, running

TIMEOUT = 0.5


def _client(url: str) -> PipelinedRedis:
    client = PipelinedRedis.from_url(url, timeout=TIMEOUT, connect_timeout=TIMEOUT)
    assert client is not None
    return client


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[PipelinedRedis]:
    client = _client(redis_url)
    yield client
    await client.close()


async def test_concurrent_callers_each_get_their_own_reply(pipe: PipelinedRedis) -> None:
    await asyncio.gather(*(pipe.execute("SET", f"k{n}", f"v{n}") for n in range(300)))
    replies = await asyncio.gather(*(pipe.execute("GET", f"k{n}") for n in range(300)))
    assert replies == [f"v{n}".encode() for n in range(300)]
    counts = await asyncio.gather(*(pipe.execute("INCR", "counter") for _ in range(300)))
    assert sorted(counts) == list(range(1, 301))


async def test_the_commands_of_one_loop_turn_share_one_write(pipe: PipelinedRedis) -> None:
    await pipe.execute("PING")  # connected
    protocol = pipe._protocol
    assert protocol is not None
    assert protocol.transport is not None
    transport = protocol.transport
    writes: list[bytes] = []
    write = transport.write

    def counted(data: bytes | bytearray | memoryview) -> None:  # records, then writes
        writes.append(bytes(data))
        write(data)

    protocol.transport = cast(asyncio.Transport, _Spy(transport, counted))
    replies = await asyncio.gather(*(pipe.execute("ECHO", f"m{n}") for n in range(20)))
    assert replies == [f"m{n}".encode() for n in range(20)]
    assert len(writes) == 1
    # A command after the turn ended goes out on its own.
    assert await pipe.execute("ECHO", "later") == b"later"
    assert len(writes) == 2


class _Spy:
    """The transport, with `write` replaced."""

    def __init__(self, transport: object, write: Callable[[bytes], None]) -> None:
        self._transport, self.write = transport, write

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def test_it_runs_on_uvloop_as_the_server_does(redis_server: RedisServer) -> None:
    # uvicorn serves on uvloop, whose transports are not asyncio's classes.
    async def main() -> list[bytes]:
        client = _client(redis_server.url)
        try:
            return list(await asyncio.gather(*(client.execute("PING") for _ in range(50))))
        finally:
            await client.close()

    assert uvloop.run(main()) == [b"PONG"] * 50


async def test_an_error_reply_is_raised_and_the_connection_stays_usable(
    pipe: PipelinedRedis,
) -> None:
    await pipe.execute("SET", "text", "not a number")
    with pytest.raises(ResponseError, match="not an integer"):
        await pipe.execute("INCR", "text")
    assert await pipe.execute("GET", "text") == b"not a number"


async def test_a_script_missing_from_redis_is_loaded(pipe: PipelinedRedis) -> None:
    script = "return tonumber(ARGV[1]) + 1"
    add_one = pipe.register_script(script)
    assert await pipe.execute("SCRIPT", "LOAD", script) == add_one.sha.encode()
    assert await add_one(args=[1]) == 2
    await pipe.execute("SCRIPT", "FLUSH")  # as after a restart without persistence
    assert await add_one(args=[41]) == 42


async def test_a_caller_that_gives_up_leaves_the_others_replies_in_step(
    pipe: PipelinedRedis,
) -> None:
    await pipe.execute("SET", "mine", "my value")
    # Redis answers one connection in order: BLPOP holds the queue for 0.3 s.
    blocked = asyncio.create_task(pipe.execute("BLPOP", "no-such-list", "0.3"))
    await asyncio.sleep(0.05)  # let it be written first
    queued = asyncio.create_task(pipe.execute("GET", "mine"))
    blocked.cancel()
    assert await queued == b"my value"  # not BLPOP's nil
    assert await pipe.execute("GET", "mine") == b"my value"


async def test_password_and_database_come_from_the_url() -> None:
    with running(RedisServer(), "redis-server") as server:
        admin = Redis.from_url(server.url, single_connection_client=True)
        try:
            await admin.config_set("requirepass", "s3cret pass")
            client = _client(f"redis://:s3cret%20pass@127.0.0.1:{server.port}/3")
            try:
                await client.execute("SET", "where", "db 3")
            finally:
                await client.close()
            wrong = _client(f"redis://:wrong@127.0.0.1:{server.port}/0")
            with pytest.raises(ResponseError):
                await wrong.execute("PING")
            await wrong.close()
            third = Redis.from_url(f"redis://:s3cret%20pass@127.0.0.1:{server.port}/3")
            assert await third.get("where") == b"db 3"
            await third.aclose()
        finally:
            await admin.aclose()


def test_urls_it_does_not_take_are_left_to_redis_py() -> None:
    for url in ("rediss://127.0.0.1:6379/0", "unix:///run/redis.sock", "redis://h:1/0?x=1"):
        assert PipelinedRedis.from_url(url, timeout=1, connect_timeout=1) is None


async def test_a_server_that_goes_away_fails_fast_and_is_reconnected_when_back() -> None:
    with running(RedisServer(), "redis-server") as server:
        client = _client(server.url)
        try:
            assert await client.execute("PING") == b"PONG"
            server.kill()
            started = time.monotonic()
            with pytest.raises(RedisConnectionError):
                await client.execute("PING")
            assert time.monotonic() - started < TIMEOUT * 3
            server.revive()
            assert await client.execute("PING") == b"PONG"
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def _hanging_redis(*, answers: int) -> AsyncIterator[PipelinedRedis]:
    """A client of a server that reads everything and answers only its first `answers`
    commands (with +PONG, one read each): a Redis that hangs."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(answers):
            await reader.read(65536)
            writer.write(b"+PONG\r\n")
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = _client(f"redis://127.0.0.1:{port}/0")
    try:
        yield client
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_a_silent_server_times_out_every_waiting_caller() -> None:
    async with _hanging_redis(answers=0) as client:
        started = time.monotonic()
        results = await asyncio.wait_for(  # bounded: a timeout that never fires fails here
            asyncio.gather(*(client.execute("GET", "x") for _ in range(5)), return_exceptions=True),
            TIMEOUT * 4,
        )
        assert all(isinstance(result, RedisTimeoutError) for result in results), results
        assert time.monotonic() - started < TIMEOUT * 3


async def test_a_command_sent_after_an_answered_one_gets_its_own_full_timeout() -> None:
    """The connection's one timer is set for the first command; when that one is answered,
    the timer moves on to the next oldest, so a later command is timed from its own send."""
    async with _hanging_redis(answers=1) as client:
        assert await client.execute("PING") == b"PONG"
        # Part of the first command's time passes: a timer left at its deadline would fail
        # the next command early.
        await asyncio.sleep(TIMEOUT * 0.6)
        sent = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(client.execute("GET", "x"), TIMEOUT * 4)
        assert TIMEOUT * 0.9 <= time.monotonic() - sent < TIMEOUT * 2
