"""Real servers for realtime tests: the app served by uvicorn on a loopback port, in this
process's event loop, and real clients (the `websockets` library, httpx over TCP).

Starlette's TestClient is not used: it fakes the transport, so close codes, handshake
refusals, backpressure and frame limits would not be the real ones.
"""

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from app.core.config import Settings
from app.main import create_app
from app.realtime.runtime import Realtime
from tests.conftest import make_settings
from tests.factories import Account, Factory

HOST = "127.0.0.1"
DEADLINE = 15.0


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
        await until(lambda: server.started or task.done(), what="uvicorn to start")
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped while starting")
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE)
        sock.close()


async def until(condition: Callable[[], bool], *, what: str, timeout: float = DEADLINE) -> None:
    """Wait for a condition of the server's state, checking often, for at most `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


LiveFactory = Callable[..., AbstractAsyncContextManager[LiveServer]]


@pytest.fixture
def live(database_url: str | None, tmp_path: Path, request: pytest.FixtureRequest) -> LiveFactory:
    """Start the app on a real port with settings overrides, on SQLite and on PostgreSQL."""

    @asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[LiveServer]:
        if database_url is not None:
            from tests.conftest import _empty_postgres

            await _empty_postgres(database_url)
        settings = make_settings(tmp_path, database_url, **overrides)
        app = create_app(settings)
        async with (
            serve(app, settings) as url,
            httpx.AsyncClient(base_url=url, timeout=DEADLINE) as http,
        ):
            yield LiveServer(app, url, http, Factory(http, app))

    return start


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


Waiter = Callable[[], Awaitable[None]]
