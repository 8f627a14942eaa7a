"""Realtime fairness over real sockets: handshake and presence limits, invalid text frames."""

import json
import logging

import pytest

from tests.realtime.conftest import LiveFactory, auth_first, close_code_of, next_of

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
