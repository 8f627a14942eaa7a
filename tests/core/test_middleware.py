import asyncio
import base64
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import itsdangerous
import pytest
import uvicorn
from fastapi import Request, WebSocket
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect

from app.core.middleware import SignedSessionMiddleware
from app.main import create_app
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory
from tests.support.processes import free_port
from tests.support.settings import BuildClient, make_settings
from tests.support.waiting import eventually_async


async def test_gzip_above_1000_bytes_only(build_client: BuildClient) -> None:
    async with build_client() as (app, client):
        factory = Factory(client, app)
        owner = await factory.account()
        for n in range(10):
            await factory.item(owner, title=f"A reasonably long item title number {n}")
        big = await client.get("/api/v1/items/", headers={"Accept-Encoding": "gzip"})
        assert big.headers["content-encoding"] == "gzip"
        assert big.json()["total"] == 10  # httpx decompressed it
        small = await client.get("/health", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in small.headers


async def test_unknown_host_is_refused_in_the_envelope(build_client: BuildClient) -> None:
    async with build_client(allowed_hosts="api.example.com,*.example.org") as (_, client):
        path = "/api/v1/items/"  # not /health*: probes pass whatever the host
        assert (await client.get(path, headers={"Host": "api.example.com"})).status_code == 200
        assert (await client.get(path, headers={"Host": "x.example.org:8443"})).status_code == 200
        refused = await client.get(path, headers={"Host": "evil.test"})
        assert_envelope(refused, 400, "bad_request")


@pytest.mark.parametrize("path", ["/health", "/health/ready"])
@pytest.mark.parametrize("host", ["127.0.0.1:8000", "10.244.1.7", "[fd00::7]:8000", "evil.test"])
async def test_health_answers_whatever_the_host(
    build_client: BuildClient, path: str, host: str
) -> None:
    """Image healthchecks and orchestrators probe 127.0.0.1:8000 or the pod IP."""
    async with build_client(allowed_hosts="api.example.com") as (_, client):
        assert (await client.get(path, headers={"Host": host})).status_code == 200
        refused = await client.get("/healthz", headers={"Host": host})  # only /health*
        assert_envelope(refused, 400, "bad_request")


@pytest.mark.parametrize(
    ("allowed", "host", "status"),
    [
        ("::1", "[::1]:8000", 200),  # as Starlette parses it: host ::1, port 8000
        ("[::1]", "[::1]", 200),
        ("::1", "[0:0::1]:8000", 400),  # the literal is compared, not the address
        ("::1", "::1", 400),  # an IPv6 host must be bracketed
        ("::1", "[::1", 400),
        ("api.example.com", "api.example.com:8443", 200),
        ("api.example.com", "API.example.com", 200),
        ("api.example.com", "api.example.com:x", 400),
        ("api.example.com", "api.example.com@evil.test", 400),
        ("api.example.com", "", 400),
    ],
)
async def test_host_is_parsed_as_starlette_does(
    build_client: BuildClient, allowed: str, host: str, status: int
) -> None:
    async with build_client(allowed_hosts=allowed) as (_, client):
        response = await client.get("/api/v1/items/", headers={"Host": host})
        if status == 400:
            assert_envelope(response, 400, "bad_request")
        else:
            assert response.status_code == status


async def test_cors_from_settings(build_client: BuildClient) -> None:
    async with build_client(cors_origins="https://app.example.com") as (_, client):
        preflight = await client.options(
            "/api/v1/items/",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        other = await client.get("/health", headers={"Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in other.headers


class CountingBody:
    """100 KiB in 1 KiB chunks, counting how many the server pulled."""

    def __init__(self) -> None:
        self.chunks_read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(100):
            self.chunks_read += 1
            yield b"x" * 1024


@pytest.mark.parametrize("declared", [True, False])
async def test_oversized_body_is_413_without_reading_it_all(
    build_client: BuildClient, declared: bool
) -> None:
    async with build_client(max_request_body_bytes=2048) as (_, client):
        body = CountingBody()
        headers = {"Content-Type": "application/json"}
        if declared:
            headers["Content-Length"] = str(100 * 1024)  # refused before reading
        response = await client.post("/api/v1/auth/register", content=body, headers=headers)
        assert_envelope(response, 413, "payload_too_large")
        assert body.chunks_read <= 4  # the server answered without taking the whole body


async def test_session_cookie_is_signed_with_the_stable_key(build_client: BuildClient) -> None:
    async with build_client() as (app, client):

        @app.get("/session-probe")
        async def probe(request: Request) -> dict[str, int]:
            request.session["visits"] = request.session.get("visits", 0) + 1
            return {"visits": request.session["visits"]}

        app.router.routes.insert(0, app.router.routes.pop())
        first = await client.get("/session-probe")
        cookie = first.cookies["app_session"]
        assert "visits" not in cookie  # signed and encoded, not plain
        assert (await client.get("/session-probe")).json() == {"visits": 2}
        client.cookies.set("app_session", cookie[:-3] + "AAA")
        assert (await client.get("/session-probe")).json() == {"visits": 1}  # tampered: ignored


@pytest.mark.parametrize("https_only", [False, True])
async def test_a_session_started_without_a_cookie_is_written_as_starlette_writes_it(
    https_only: bool,
) -> None:
    """Requests without a cookie skip Starlette's layer (SignedSessionMiddleware); what a
    route then stores comes back as the same cookie, and a route that only reads or never
    touches the session gets no cookie, the former with `Vary: Cookie` as before."""

    async def probe(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        if request.url.path == "/write":
            request.session["visits"] = 1
        elif request.url.path == "/read":
            request.session.get("visits")
        await PlainTextResponse("ok")(scope, receive, send)

    answers: dict[str, list[httpx.Response]] = {}
    for layer in (SessionMiddleware, SignedSessionMiddleware):
        app = layer(
            probe, secret_key="k" * 32, session_cookie="s", max_age=60, https_only=https_only
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            answers[layer.__name__] = [await client.get(p) for p in ("/write", "/read", "/")]
    signer = itsdangerous.TimestampSigner("k" * 32)
    for theirs, ours in zip(*answers.values(), strict=True):
        assert ours.headers.get("vary") == theirs.headers.get("vary")
        assert ("set-cookie" in ours.headers) == ("set-cookie" in theirs.headers)
        if "set-cookie" in theirs.headers:
            value, _, attributes = ours.headers["set-cookie"].partition(";")
            assert attributes == theirs.headers["set-cookie"].partition(";")[2]
            payload = signer.unsign(value.removeprefix("s="), max_age=60)
            assert json.loads(base64.b64decode(payload)) == {"visits": 1}


@pytest.mark.parametrize("path", ["/health", "/api/v1/nothing"])
async def test_security_headers(build_client: BuildClient, path: str) -> None:
    async with build_client() as (_, client):
        response = await client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


async def test_websockets_pass_through_the_whole_stack(
    sqlite_template: Path, tmp_path: Path
) -> None:
    shutil.copy(sqlite_template, tmp_path / "app.db")
    settings = make_settings(tmp_path, allowed_hosts="127.0.0.1", max_request_body_bytes=1024)
    app = create_app(settings)

    @app.websocket("/ws/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())
    try:
        await eventually_async(  # the server's own startup, in this loop
            lambda: _started(server, serving), timeout=15, interval=0.01, what="uvicorn to start"
        )
        async with connect(f"ws://127.0.0.1:{port}/ws/echo") as websocket:
            await websocket.send("x" * 4096)  # over the HTTP body cap: not an HTTP body
            assert await websocket.recv() == "x" * 4096
    finally:
        server.should_exit = True
        await serving


async def test_event_streams_are_never_gzipped(build_client: BuildClient) -> None:
    async with build_client() as (app, client):

        @app.get("/events-probe")
        async def events() -> StreamingResponse:
            async def stream() -> AsyncIterator[bytes]:
                for n in range(50):
                    yield f"data: {'x' * 40} {n}\n\n".encode()

            return StreamingResponse(stream(), media_type="text/event-stream")

        app.router.routes.insert(0, app.router.routes.pop())
        response = await client.get("/events-probe", headers={"Accept-Encoding": "gzip"})
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers  # a proxy would buffer gzip chunks
        assert response.text.count("data:") == 50


async def test_personal_answers_are_never_stored(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """An answer to a request with credentials (token or cookie) carries no-store unless its
    route chose its own policy; the same public answer to an anonymous client stays cacheable."""
    owner = await factory.account()
    item_id = (await factory.item(owner))["id"]
    personal = [
        await client.get("/api/v1/users/me", headers=owner.headers),
        await client.get(f"/api/v1/items/{item_id}", headers=owner.headers),
        await client.get("/api/v1/items/", headers=owner.headers),
        await client.get("/api/v1/nothing", headers=owner.headers),  # errors too
        await client.get("/api/v1/items/", headers={"Cookie": "refresh_token=x"}),
    ]
    for response in personal:
        assert response.headers["cache-control"] == "no-store", response.url
    anonymous = await client.get(f"/api/v1/items/{item_id}")
    assert anonymous.status_code == 200
    assert "cache-control" not in anonymous.headers


def _started(server: uvicorn.Server, serving: asyncio.Task[None]) -> bool:
    assert not serving.done(), "server failed to start"
    return server.started
