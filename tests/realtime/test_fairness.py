"""Realtime fairness over real sockets: handshake and presence limits, invalid text frames."""

import json
import logging
from typing import Any

import pytest
from sqlalchemy import text
from websockets.exceptions import InvalidStatus

from tests.support.apis import wait_for_window_headroom
from tests.support.live import LiveFactory, auth_first, close_code_of, next_of

# `\ud800` as JSON escapes it: valid UTF-8 on the wire, a lone surrogate once decoded.
LONE_SURROGATE = '{"type": "message", "content": "a\\ud800b"}'


async def test_lone_surrogate_closes_1007_without_traceback(
    live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with live() as server:
        alice = await server.factory.account()
        async with server.ws("/ws/chat/lobby") as ws:
            await auth_first(ws, alice)
            await next_of(ws, "join")
            # A surrogate pair is one valid character and is posted as usual.
            await ws.send(json.dumps({"type": "message", "content": "\U0001f600"}))
            assert (await next_of(ws, "message"))["content"] == "\U0001f600"
            await ws.send(LONE_SURROGATE)
            assert await close_code_of(ws) == 1007
        # The same in the auth frame, before the user is known.
        async with server.ws("/ws/chat/lobby") as ws:
            await ws.send('{"type": "auth", "token": "\\udfff"}')
            assert await close_code_of(ws) == 1007
        history = await server.http.get("/api/v1/chat/rooms/lobby/messages", headers=alice.headers)
        assert [m["content"] for m in history.json()["items"]] == ["\U0001f600"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "websocket closed (1007)" in line]) == 2, lines


# Fixed windows are aligned to the clock: hour-long ones, with headroom, can't reset mid-test.
HOUR = 3600.0


def _refused_429(refused: pytest.ExceptionInfo[InvalidStatus]) -> dict[str, Any]:
    response = refused.value.response
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    body: dict[str, Any] = json.loads(response.body or b"{}")
    assert body["error"]["code"] == "rate_limited", body
    assert body["error"]["status"] == 429, body
    return body


async def test_connects_over_the_user_limit_are_refused_before_the_handshake(
    live: LiveFactory,
) -> None:
    wait_for_window_headroom(HOUR, 60)
    async with live(rate_limit_realtime_connect_user="3/hour") as server:
        alice, bob = await server.factory.account(), await server.factory.account()
        bearer = ["bearer", alice.access_token]
        async with server.ws("/ws/notifications", subprotocols=bearer) as ws:
            await ws.ping()
        async with server.http.stream(
            "GET", "/api/v1/notifications/stream", headers=alice.headers
        ) as stream:
            assert stream.status_code == 200
        async with server.ws("/ws/chat/lobby", subprotocols=bearer) as ws:
            assert (await next_of(ws, "join"))["user"]["id"] == alice.id
        # The fourth connect of any kind: a 429 in the envelope, before any accept.
        for path in ("/ws/notifications", "/ws/chat/lobby"):
            with pytest.raises(InvalidStatus) as refused:
                async with server.ws(path, subprotocols=bearer):
                    pass
            _refused_429(refused)
        response = await server.http.get("/api/v1/notifications/stream", headers=alice.headers)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limited"
        assert int(response.headers["Retry-After"]) >= 1
        # A token sent in the first frame names its user only after the accept: 4429 then.
        async with server.ws("/ws/notifications") as ws:
            await auth_first(ws, alice)
            assert await close_code_of(ws) == 4429
        # Another user has a budget of their own.
        async with server.ws("/ws/notifications") as ws:
            await auth_first(ws, bob)
            await ws.ping()


async def test_connects_over_the_client_limit_are_refused_whoever_connects(
    live: LiveFactory,
) -> None:
    wait_for_window_headroom(HOUR, 60)
    async with live(rate_limit_realtime_connect_client="3/hour") as server:
        accounts = [await server.factory.account() for _ in range(3)]
        for account in accounts:
            async with server.ws(
                "/ws/notifications", subprotocols=["bearer", account.access_token]
            ) as ws:
                await ws.ping()
        newcomer = await server.factory.account()
        with pytest.raises(InvalidStatus) as refused:
            async with server.ws(
                "/ws/notifications", subprotocols=["bearer", newcomer.access_token]
            ):
                pass
        _refused_429(refused)
        # Refused before the token is even looked at: no token, same answer.
        with pytest.raises(InvalidStatus) as refused:
            async with server.ws("/ws/chat/lobby"):
                pass
        _refused_429(refused)
        response = await server.http.get("/api/v1/notifications/stream", headers=newcomer.headers)
        assert response.status_code == 429


async def test_presence_changes_are_limited_per_connection(live: LiveFactory) -> None:
    wait_for_window_headroom(HOUR, 60)
    async with live(rate_limit_chat_presence="2/hour") as server:
        alice = await server.factory.account()
        bearer = ["bearer", alice.access_token]
        async with server.ws("/ws/chat/lobby", subprotocols=bearer) as ws:
            await next_of(ws, "join")
            for _ in range(2):
                await ws.send('{"type": "typing"}')
                assert (await next_of(ws, "typing"))["user"]["id"] == alice.id
            await ws.send('{"type": "typing"}')
            error = await next_of(ws, "error")
            assert error["code"] == "rate_limited"
            assert error["retry_after"] >= 1
            # Messages are not presence: they still go through.
            await ws.send(json.dumps({"type": "message", "content": "still here"}))
            assert (await next_of(ws, "message"))["content"] == "still here"
        # A new connection starts with a budget of its own.
        async with server.ws("/ws/chat/lobby", subprotocols=bearer) as ws:
            await next_of(ws, "join")
            await ws.send('{"type": "typing"}')
            assert (await next_of(ws, "typing"))["user"]["id"] == alice.id


async def test_an_exhausted_pool_after_the_accept_closes_1013_with_one_warning(
    live: LiveFactory, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exception handlers also get the WebSocket: after the accept (our sockets authenticate
    once accepted) no HTTP response can go out, so the pool's 503 becomes close 1013 "try
    again later" with the usual one warning line. It was an AttributeError on `.method`, a
    dropped connection with no close frame and a traceback."""
    caplog.set_level(logging.INFO)
    async with live(
        database_pool_size=1, database_max_overflow=0, database_pool_timeout_seconds=0.2
    ) as server:
        alice = await server.factory.account()
        bearer = ["bearer", alice.access_token]
        engine = server.app.state.services.engine
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))  # the pool's only connection, kept busy
            async with server.ws("/ws/chat/lobby", subprotocols=bearer) as ws:
                assert await close_code_of(ws) == 1013
        # Freed, the same connect joins the room: the timeout left nothing broken.
        async with server.ws("/ws/chat/lobby", subprotocols=bearer) as ws:
            assert (await next_of(ws, "join"))["user"]["id"] == alice.id
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    out = capsys.readouterr().out  # the app's structlog lines
    assert "Traceback" not in out, out
    assert out.count("database pool exhausted") == 1, out
