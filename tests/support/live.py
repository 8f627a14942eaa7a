"""Real servers for realtime tests: the app served by uvicorn on a loopback port, in this
process's event loop, and real clients (the `websockets` library, httpx over TCP, an SSE
reader).

Starlette's TestClient is not used: it fakes the transport, so close codes, handshake
refusals, backpressure and frame limits would not be the real ones. The `live` fixture that
builds a LiveServer per test is in tests/realtime/conftest.py.
"""

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from app.core.config import Settings
from app.realtime.runtime import Realtime
from tests.support.factories import Account, Factory
from tests.support.processes import HOST
from tests.support.waiting import eventually_async

DEADLINE = 15.0
STREAM = "/api/v1/notifications/stream"


@dataclass
class LiveServer:
    app: FastAPI
    url: str
    http: httpx.AsyncClient
    factory: Factory

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    @property
    def realtime(self) -> Realtime:
        rt: Realtime = self.app.state.realtime
        return rt

    def ws(self, path: str, **kwargs: Any) -> Any:
        """A websockets client connection (use with `async with`)."""
        kwargs.setdefault("open_timeout", DEADLINE)
        kwargs.setdefault("close_timeout", 2)
        return connect(self.ws_url + path, **kwargs)


@asynccontextmanager
async def serve(app: FastAPI, settings: Settings) -> AsyncIterator[str]:
    """Serve `app` (made from `settings`) with uvicorn on a socket we bind first (port 0: no
    race for a port). The settings are passed: the app holds its services only once started."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws_max_size=settings.ws_max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually_async(
            lambda: server.started or task.done(),
            timeout=DEADLINE,
            interval=0.005,
            what="uvicorn to start",
        )
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped while starting")
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE)
        sock.close()


async def auth_first(ws: ClientConnection, account: Account, **extra: Any) -> None:
    await ws.send(json.dumps({"type": "auth", "token": account.access_token, **extra}))


async def next_of(ws: ClientConnection, kind: str, timeout: float = DEADLINE) -> dict[str, Any]:
    """The next frame of one type, skipping the others (joins, leaves, typing)."""
    async with asyncio.timeout(timeout):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame


async def close_code_of(ws: ClientConnection, timeout: float = DEADLINE) -> int | None:
    """Read until the server closes the connection; its close code."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    received = ws.protocol.close_rcvd
    assert received is not None, f"no close frame from the server (state {ws.state.name})"
    return received.code


LiveFactory = Callable[..., AbstractAsyncContextManager[LiveServer]]


@dataclass
class Event:
    event: str | None = None
    id: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def json(self) -> dict[str, object]:
        value: dict[str, object] = json.loads("\n".join(self.data))
        return value


class EventStream:
    """A Server-Sent Events reader over a real HTTP response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = DEADLINE) -> Event:
        event = Event()
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if not line:
                    if event.data or event.comments or event.event:
                        return event
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    event.comments.append(value)
                elif name == "data":
                    event.data.append(value)
                elif name in ("event", "id"):
                    setattr(event, name, value)
        raise AssertionError("the stream ended")

    async def next_notification(self) -> Event:
        while True:
            event = await self.next()
            if event.event == "notification":
                return event


@asynccontextmanager
async def sse(server: LiveServer, account: Account, **headers: str) -> AsyncIterator[EventStream]:
    async with server.http.stream(
        "GET", STREAM, headers={**account.headers, **headers}, timeout=DEADLINE
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        first = await stream.next()  # sent once subscribed: from here nothing is missed
        assert first.comments == ["connected"]
        yield stream


async def ready(ws: ClientConnection) -> None:
    """A pong comes back only once the socket is subscribed."""
    await ws.send('{"type": "ping"}')
    await next_of(ws, "pong")
