"""app.core.streams in one process: the per-user cap (and across processes over a real
Redis), and the response's write timeout, disconnect and refusal, each freeing its slot and
closing the body. The real server under stalled readers: tests/system/test_streams.py."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from starlette.types import Message, Scope

from app.core.leases import Leases
from app.core.streams import (
    KEY_PREFIX,
    RETRY_AFTER_SECONDS,
    LimitedStreamingResponse,
    StreamLimiter,
)

USER = 7


def http_scope() -> Scope:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": "/api/v1/exports/items", "raw_path": b"",
        "query_string": b"", "root_path": "", "headers": [], "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
    }  # fmt: skip


class Body:
    """An endless body that records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False
        self.chunks = 0

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.chunks += 1
                yield b"x" * 1024
        finally:
            self.closed = True


async def never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_the_cap_counts_each_users_streams() -> None:
    limiter = StreamLimiter(max_per_user=2)
    first, second = await limiter.acquire(USER), await limiter.acquire(USER)
    assert first is not None
    assert second is not None
    assert await limiter.acquire(USER) is None
    assert await limiter.acquire(USER + 1) is not None  # another user's budget
    limiter.release(first)
    assert limiter.active(USER) == 1
    assert await limiter.acquire(USER) is not None


async def test_the_cap_holds_across_processes_over_redis(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    leases = [Leases(redis, key_prefix=KEY_PREFIX, lease_seconds=30) for _ in range(2)]
    for lease in leases:
        lease.start()
    a, b = (StreamLimiter(max_per_user=2, leases=lease) for lease in leases)
    try:
        held = [await a.acquire(USER), await a.acquire(USER)]
        assert None not in held
        assert await b.acquire(USER) is None  # b's own count is 0: Redis refused
        first = held[0]
        assert first is not None
        a.release(first)
        deadline = time.monotonic() + 5
        while (slot := await b.acquire(USER)) is None:
            assert time.monotonic() < deadline, "released lease never reached Redis"
            await asyncio.sleep(0.02)
        assert slot.lease is not None
        assert await redis.zcard(f"{KEY_PREFIX}{USER}") == 2
    finally:
        await a.close()
        await b.close()
        await redis.aclose()


async def test_a_reader_that_stops_reading_is_cut_off_and_frees_its_slot() -> None:
    limiter = StreamLimiter(max_per_user=1)
    body = Body()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        if len(sent) >= 3:  # the socket buffer is full: the server's send blocks
            await asyncio.Event().wait()
        sent.append(message)

    response = LimitedStreamingResponse(
        body(), limiter=limiter, user_id=USER, write_timeout=0.2, media_type="text/csv"
    )
    started = time.monotonic()
    await asyncio.wait_for(response(http_scope(), never_disconnects, send), timeout=10)
    assert 0.2 <= time.monotonic() - started < 5
    assert sent[0]["type"] == "http.response.start"
    assert all(m.get("more_body") for m in sent[1:])  # unfinished: the server will close
    assert body.closed
    assert limiter.active(USER) == 0


async def test_a_client_that_disconnects_ends_the_stream_at_once() -> None:
    limiter = StreamLimiter(max_per_user=1)
    body = Body()
    gone = asyncio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        # Under ASGI 2.4 a server's send returns quietly once the client is gone.
        if body.chunks == 50:
            gone.set()
        await asyncio.sleep(0)

    response = LimitedStreamingResponse(
        body(), limiter=limiter, user_id=USER, write_timeout=60, media_type="text/csv"
    )
    await asyncio.wait_for(response(http_scope(), receive, send), timeout=10)
    assert body.closed
    assert body.chunks < 1000  # stopped, not read to the end of an endless body
    assert limiter.active(USER) == 0


async def test_past_the_cap_the_answer_is_429_in_the_envelope() -> None:
    limiter = StreamLimiter(max_per_user=1)
    assert await limiter.acquire(USER) is not None
    body = Body()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    response = LimitedStreamingResponse(
        body(), limiter=limiter, user_id=USER, write_timeout=60, media_type="text/csv"
    )
    await response(http_scope(), never_disconnects, send)
    start, content = sent[0], sent[1]
    assert start["status"] == 429
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    error: dict[str, Any] = json.loads(content["body"])["error"]
    assert (error["status"], error["code"]) == (429, "rate_limited")
    assert body.chunks == 0
    assert limiter.active(USER) == 1  # the refused one took nothing
