"""`app api`'s protocol sends a fixed-size response's head and body in one write (one send(),
one TCP segment), and everything that must not wait for a body as it comes: a streamed
response's head before its first part, the answer to HEAD, an empty body, 100 Continue.

The protocol is driven directly, on a transport that records its writes: what crosses the
socket in how many segments is not something a client can observe reliably."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.core.http_server import LimitedHttpToolsProtocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.wrote = asyncio.Event()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.wrote.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def json_route(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def empty_route(request: Request) -> Response:
    return Response(status_code=204)


async def stream_route(request: Request) -> Response:
    first_part: asyncio.Event = request.app.state.first_part  # set by the test: it may go

    async def parts() -> AsyncIterator[bytes]:
        await first_part.wait()
        yield b"data: one\n\n"

    return StreamingResponse(parts(), media_type="text/event-stream")


async def echo_route(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


APP = Starlette(
    routes=[
        Route("/json", json_route, methods=["GET", "HEAD"]),
        Route("/empty", empty_route),
        Route("/stream", stream_route),
        Route("/echo", echo_route, methods=["POST"]),
    ]
)


async def connect() -> tuple[LimitedHttpToolsProtocol, RecordingTransport]:
    config = Config(app=APP, lifespan="off", access_log=False, log_config=None)
    config.load()
    protocol = LimitedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def writes_until(transport: RecordingTransport, ending: bytes) -> list[bytes]:
    async with asyncio.timeout(5):
        while not b"".join(transport.writes).endswith(ending):
            transport.wrote.clear()
            await transport.wrote.wait()
    return transport.writes


async def test_a_fixed_size_response_is_one_write() -> None:
    protocol, transport = await connect()
    protocol.data_received(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
    writes = await writes_until(transport, b'{"ok":true}')
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    transport.writes.clear()  # the next request on the kept-alive connection: the same
    protocol.data_received(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
    writes = await writes_until(transport, b'{"ok":true}')
    assert len(writes) == 1
    protocol.connection_lost(None)


@pytest.mark.parametrize(
    "request_line", [b"HEAD /json HTTP/1.1", b"GET /empty HTTP/1.1"], ids=["head", "empty"]
)
async def test_a_head_without_a_body_goes_at_once(request_line: bytes) -> None:
    protocol, transport = await connect()
    protocol.data_received(request_line + b"\r\nHost: t\r\n\r\n")
    writes = await writes_until(transport, b"\r\n\r\n")
    assert writes[0].endswith(b"\r\n\r\n")  # the whole head, in its own write
    assert b"".join(writes[1:]) == b""  # uvicorn may write an empty body after it
    protocol.connection_lost(None)


async def test_a_streamed_head_does_not_wait_for_the_first_part() -> None:
    first_part = APP.state.first_part = asyncio.Event()  # of this test's event loop
    protocol, transport = await connect()
    protocol.data_received(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    writes = await writes_until(transport, b"\r\n\r\n")
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in writes[0]
    first_part.set()
    await writes_until(transport, b"0\r\n\r\n")
    assert b"data: one" in b"".join(transport.writes[1:])
    protocol.connection_lost(None)


async def test_100_continue_goes_before_the_body_is_read() -> None:
    protocol, transport = await connect()
    protocol.data_received(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    writes = await writes_until(transport, b"100 Continue\r\n\r\n")
    assert writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.data_received(b"hello")
    writes = await writes_until(transport, b"hello")
    assert len(writes) == 2  # the 100, then the answer's head and body together
    assert writes[1].startswith(b"HTTP/1.1 200 OK\r\n")
    protocol.connection_lost(None)
