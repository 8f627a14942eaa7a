import asyncio
import re
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
from asyncpg.exceptions import CannotConnectNowError, UniqueViolationError  # type: ignore[import-untyped]
from fastapi import FastAPI, WebSocket
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.core.errors import install_error_handlers
from tests.support.assertions import assert_envelope
from tests.support.live import DEADLINE, serve
from tests.support.processes import free_port
from tests.support.settings import make_settings


async def test_unknown_path_is_404_envelope(client: httpx.AsyncClient) -> None:
    error = assert_envelope(await client.get("/api/v1/nothing-here"), 404, "not_found")
    assert "/api/v1/nothing-here" in str(error["message"])


async def test_wrong_method_is_405_envelope_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/health")
    assert_envelope(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_405_allow_lists_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    """Starlette named only the first matching route's methods (`GET` for a path that also
    takes POST); every path in the API must list all of its methods."""
    schema = (await client.get("/openapi.json")).json()
    checked = 0
    for template, operations in schema["paths"].items():
        documented = {method.upper() for method in operations}
        unused = next(m for m in ("PUT", "PATCH", "DELETE", "POST", "GET") if m not in documented)
        path = re.sub(r"\{[^}]+\}", "1", template)
        response = await client.request(unused, path)
        if response.status_code != 405:  # another template serves it (e.g. /users/me)
            continue
        allow = {method.strip() for method in response.headers["allow"].split(",")}
        assert documented <= allow, (template, allow)
        assert unused not in allow
        checked += 1
    assert checked > 40


async def test_validation_error_lists_each_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={
            "username": "a",
            "email": "not-an-email",
            "password": "short",
            "password_confirm": "x",
        },
    )
    error = assert_envelope(response, 422, "validation_error")
    fields = {d["field"] for d in error["details"]}  # type: ignore[attr-defined]
    assert {"body.username", "body.email", "body.password"} <= fields
    for detail in error["details"]:  # type: ignore[attr-defined]
        assert set(detail) == {"field", "message", "type"}


async def test_validation_error_never_echoes_input(client: httpx.AsyncClient) -> None:
    secret = "Sup3r-secret-value"
    response = await client.post(
        "/api/v1/auth/register",
        json={"username": "ok_name", "email": "x@example.com", "password": secret,
              "password_confirm": "different"},
    )  # fmt: skip
    assert response.status_code == 422
    assert secret not in response.text


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"username=x", "text/plain"),
    ],
)
async def test_malformed_bodies_are_422(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=content, headers={"content-type": content_type}
    )
    assert_envelope(response, 422, "validation_error")


async def test_unhandled_error_is_500_without_internals(app: FastAPI) -> None:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("database password is hunter2")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/boom", headers={"X-Request-ID": "trace-me-123"})
    error = assert_envelope(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert error["request_id"] == "trace-me-123"


async def _get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.get(path)


async def test_database_gone_is_503_with_retry_after(app: FastAPI) -> None:
    # Nothing listens on the port: what the app meets while PostgreSQL restarts (a refused
    # connection, which SQLAlchemy passes through unwrapped). Seen as a 500 on the real stack.
    engine = create_async_engine(f"postgresql+asyncpg://app:x@127.0.0.1:{free_port()}/app")

    @app.get("/db-gone")
    async def db_gone() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    response = await _get(app, "/db-gone")
    await engine.dispose()
    assert_envelope(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == "5"


async def test_database_shutting_down_is_503(app: FastAPI) -> None:
    @app.get("/db-stopping")
    async def db_stopping() -> None:
        # What asyncpg raises (SQLSTATE 57P03) and SQLAlchemy wraps while the server stops.
        cause = CannotConnectNowError("the database system is shutting down")
        raise DBAPIError("SELECT 1", None, cause) from cause

    assert_envelope(await _get(app, "/db-stopping"), 503, "service_unavailable")


async def test_other_database_errors_stay_500(app: FastAPI) -> None:
    @app.get("/db-bug")
    async def db_bug() -> None:
        cause = UniqueViolationError("duplicate key value violates unique constraint")
        raise DBAPIError("INSERT ...", None, cause) from cause

    assert_envelope(await _get(app, "/db-bug"), 500, "internal_error")


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/health")
    again = await client.get("/health")
    for response in (made, again):  # 128 random bits in hex, a fresh one each time
        assert re.fullmatch("[0-9a-f]{32}", response.headers["x-request-id"])
    assert made.headers["x-request-id"] != again.headers["x-request-id"]
    hostile = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert hostile.headers["x-request-id"] != "bad id\twith spaces"
    assert "x-process-time" in made.headers


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/health"), await client.get("/missing")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    ("status", "close_code"),
    [(403, 1008), (429, 1008), (500, 1011), (502, 1011), (503, 1013)],
)
async def test_an_error_after_a_websocket_accept_is_a_close_frame(
    tmp_path: Path, status: int, close_code: int
) -> None:
    """After the accept no HTTP response can go out: the handlers' answer becomes a close
    frame over a real socket (1013 try again later, 1011 server error, 1008 refusal), with the
    status's phrase as reason. Before the accept it stays the HTTP denial."""
    app = FastAPI()
    install_error_handlers(app)

    @app.websocket("/ws/{when}")
    async def failing(websocket: WebSocket, when: str) -> None:
        if when == "after":
            await websocket.accept()
        raise StarletteHTTPException(status)

    async with serve(app, make_settings(tmp_path)) as url:
        ws_url = url.replace("http://", "ws://", 1)
        async with connect(f"{ws_url}/ws/after", open_timeout=DEADLINE) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), DEADLINE)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            close_code,
            HTTPStatus(status).phrase,
        )
        with pytest.raises(InvalidStatus) as denied:
            async with connect(f"{ws_url}/ws/before", open_timeout=DEADLINE):
                pass
        assert denied.value.response.status_code == status
