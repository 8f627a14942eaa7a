"""Forwarded headers (app.core.proxy): believed from TRUSTED_PROXIES only, for HTTP and
WebSocket alike, so the client address, the scheme and the host (with its port) are the
client's for everything behind the middleware."""

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, WebSocket
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send
from structlog.testing import capture_logs
from websockets.asyncio.client import connect

from app.core.proxy import ForwardedHeadersMiddleware, trusted_hosts
from app.main import create_app
from tests.support.processes import free_port
from tests.support.settings import make_settings
from tests.support.waiting import eventually_async

FORGED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "example.com:8443",
}


async def _seen(
    trusted: list[str],
    headers: dict[str, str],
    *,
    peer: str = "127.0.0.1",
    scope_type: str = "http",
    host: str = "api1:8000",
) -> Scope:
    """The scope the app behind the middleware gets, for a request from `peer`."""
    seen: dict[str, Scope] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["scope"] = scope

    scope: Scope = {
        "type": scope_type,
        "scheme": "ws" if scope_type == "websocket" else "http",
        "client": (peer, 50000),
        "server": ("10.0.0.2", 8000),
        "path": "/",
        "headers": [(b"host", host.encode())]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> Message:
        raise AssertionError("not called")

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    await ForwardedHeadersMiddleware(app, trusted_proxies=trusted)(scope, receive, send)
    return seen["scope"]


def _host(scope: Scope) -> str:
    hosts = [v.decode() for k, v in scope["headers"] if k == b"host"]
    assert len(hosts) == 1
    return str(hosts[0])


async def test_an_untrusted_peer_forges_nothing() -> None:
    scope = await _seen(["10.0.0.0/8", "::1"], FORGED, peer="192.0.2.50")
    assert scope["client"] == ("192.0.2.50", 50000)
    assert scope["scheme"] == "http"
    assert _host(scope) == "api1:8000"


async def test_a_trusted_peer_gives_client_scheme_and_host() -> None:
    scope = await _seen(["10.0.0.0/8"], FORGED, peer="10.1.2.3")
    assert scope["client"] == ("203.0.113.7", 0)  # no port in the header
    assert scope["scheme"] == "https"
    assert _host(scope) == "example.com:8443"


async def test_the_nearest_untrusted_hop_is_the_client() -> None:
    # A client prepending addresses can't choose its own: the hops are read from our side.
    headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.0.0.5"}
    scope = await _seen(["127.0.0.1", "10.0.0.0/8"], headers)
    assert scope["client"] == ("203.0.113.7", 0)


async def test_when_every_hop_is_trusted_the_leftmost_wins() -> None:
    """uvicorn's rule (the hand-written code before it returned the peer): the request came
    from inside, and the first address in the chain is where it started."""
    headers = {"X-Forwarded-For": "10.0.0.5, 10.0.0.6"}
    scope = await _seen(["127.0.0.1", "10.0.0.0/8"], headers)
    assert scope["client"] == ("10.0.0.5", 0)


async def test_ipv6_forms() -> None:
    headers = {"X-Forwarded-For": "[2001:db8::1]:443", "X-Forwarded-Host": "[2001:db8::2]:8443"}
    scope = await _seen(["::1"], headers, peer="::1")
    assert scope["client"] == ("2001:db8::1", 443)
    assert _host(scope) == "[2001:db8::2]:8443"
    # A bracketed trusted hop is recognised as trusted, so the address before it is the client.
    chain = {"X-Forwarded-For": "198.51.100.1, [2001:db8::5]:80"}
    scope = await _seen(["2001:db8::/32"], chain, peer="2001:db8::9")
    assert scope["client"] == ("198.51.100.1", 0)


@pytest.mark.parametrize(
    ("forwarded_host", "expected"),
    [
        ("forged.test, example.com", "example.com"),  # the entry our peer vouches for
        ("example.com/evil", "api1:8000"),  # not a host: ignored
        ("exa mple.com", "api1:8000"),
        ("[not:an:ip::x]", "api1:8000"),
        ("", "api1:8000"),
    ],
)
async def test_forwarded_host_takes_only_a_well_formed_host(
    forwarded_host: str, expected: str
) -> None:
    scope = await _seen(["127.0.0.1"], {"X-Forwarded-Host": forwarded_host})
    assert _host(scope) == expected


async def test_proto_must_be_a_single_known_scheme() -> None:
    scope = await _seen(["127.0.0.1"], {"X-Forwarded-Proto": "https, http"})
    assert scope["scheme"] == "http"  # a list is not believed (uvicorn's rule)


async def test_websocket_scopes_get_it_too() -> None:
    scope = await _seen(["127.0.0.1"], FORGED, scope_type="websocket")
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "wss"
    assert _host(scope) == "example.com:8443"


def test_trusted_proxies_are_normalized_and_validated(tmp_path: Path) -> None:
    # uvicorn would take "10.0.0.1/8" (host bits set) as a literal nobody matches.
    assert trusted_hosts(["10.0.0.1/8", " 172.29.250.10 ", "::1/128", "2001:db8::/32"]) == [
        "10.0.0.0/8",
        "172.29.250.10",
        "::1",
        "2001:db8::/32",
    ]
    with pytest.raises(ValidationError, match="nginx"):
        make_settings(tmp_path, trusted_proxies="nginx")


@asynccontextmanager
async def _client(
    sqlite_template: Path, tmp_path: Path, *, peer: str = "127.0.0.1", **overrides: object
) -> AsyncIterator[httpx.AsyncClient]:
    shutil.copy(sqlite_template, tmp_path / "app.db")
    app = create_app(make_settings(tmp_path, None, **overrides))
    transport = httpx.ASGITransport(app=app, client=(peer, 50000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api1:8000") as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("trusted", "location"),
    [
        ("127.0.0.1", "https://example.com:8443/api/v1/items/"),
        ("", "http://api1:8000/api/v1/items/"),  # nothing trusted: the middleware isn't mounted
        ("10.0.0.0/8", "http://api1:8000/api/v1/items/"),
    ],
)
async def test_trailing_slash_redirect_keeps_scheme_host_and_port(
    sqlite_template: Path, tmp_path: Path, trusted: str, location: str
) -> None:
    async with _client(sqlite_template, tmp_path, trusted_proxies=trusted) as client:
        response = await client.get("/api/v1/items", headers=FORGED)
    assert response.status_code == 307
    assert response.headers["location"] == location


async def test_allowed_hosts_sees_the_forwarded_host(sqlite_template: Path, tmp_path: Path) -> None:
    settings: dict[str, Any] = {"allowed_hosts": "example.com", "trusted_proxies": "127.0.0.1"}
    async with _client(sqlite_template, tmp_path, **settings) as client:
        assert (await client.get("/api/v1/items/", headers=FORGED)).status_code == 200
        assert (await client.get("/api/v1/items/")).status_code == 400  # Host api1:8000
    async with _client(sqlite_template, tmp_path, peer="192.0.2.50", **settings) as client:
        # From anyone else the header is ignored: it can't smuggle an allowed host in.
        assert (await client.get("/api/v1/items/", headers=FORGED)).status_code == 400


async def test_access_log_has_the_forwarded_client(sqlite_template: Path, tmp_path: Path) -> None:
    async with _client(sqlite_template, tmp_path, trusted_proxies="127.0.0.1") as client:
        with capture_logs() as logs:
            await client.get("/api/v1/items/", headers=FORGED)
    assert [r["client"] for r in logs if r["event"] == "request"] == ["203.0.113.7"]


@asynccontextmanager
async def _served(app: FastAPI) -> AsyncIterator[int]:
    port = free_port()
    # As `app api` runs it: uvicorn's own proxy handling (on by default, trusting 127.0.0.1)
    # would rewrite the client before the app sees the peer.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, proxy_headers=False)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await eventually_async(  # the server's own startup, in this loop
            lambda: _started(server, serving), timeout=15, interval=0.01, what="uvicorn to start"
        )
        yield port
    finally:
        server.should_exit = True
        await serving


def _add_probe(app: FastAPI) -> None:
    @app.websocket("/ws/probe")
    async def probe(websocket: WebSocket) -> None:
        await websocket.accept()
        client = websocket.client
        await websocket.send_json(
            {"client": client.host if client else None, "scheme": websocket.url.scheme,
             "host": websocket.headers["host"], "url": str(websocket.url)}
        )  # fmt: skip
        await websocket.close()


@pytest.mark.parametrize("trusted", [True, False])
async def test_websockets_through_a_real_server(
    sqlite_template: Path, tmp_path: Path, trusted: bool
) -> None:
    shutil.copy(sqlite_template, tmp_path / "app.db")
    proxies = "127.0.0.1" if trusted else "10.0.0.0/8"
    app = create_app(make_settings(tmp_path, trusted_proxies=proxies))
    _add_probe(app)
    async with (
        _served(app) as port,
        connect(f"ws://127.0.0.1:{port}/ws/probe", additional_headers=FORGED) as websocket,
    ):
        seen = json.loads(await websocket.recv())
    if trusted:
        assert seen == {"client": "203.0.113.7", "scheme": "wss", "host": "example.com:8443",
                        "url": "wss://example.com:8443/ws/probe"}  # fmt: skip
    else:
        assert seen == {"client": "127.0.0.1", "scheme": "ws", "host": f"127.0.0.1:{port}",
                        "url": f"ws://127.0.0.1:{port}/ws/probe"}  # fmt: skip


def _started(server: uvicorn.Server, serving: asyncio.Task[None]) -> bool:
    assert not serving.done(), "server failed to start"
    return server.started
