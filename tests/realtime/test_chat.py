"""RT-1 over real sockets: authentication and its close codes, Origin checks, rooms,
ordering, history over REST, resume after a disconnect, limits."""

import json

import pytest
from websockets.exceptions import InvalidStatus

from app.auth.models import Role
from tests.support.live import LiveFactory, auth_first, close_code_of, next_of


async def test_auth_failures_close_with_their_codes(live: LiveFactory) -> None:
    async with live(ws_auth_timeout_seconds=0.5) as server:
        alice = await server.factory.account()
        # A token that is not ours, in the first message.
        async with server.ws("/ws/chat/lobby") as ws:
            await ws.send(json.dumps({"type": "auth", "token": "not-a-jwt"}))
            assert await close_code_of(ws) == 4401
        # The same in the Sec-WebSocket-Protocol header: the handshake is accepted, then closed.
        async with server.ws("/ws/chat/lobby", subprotocols=["bearer", "abc.def.ghi"]) as ws:
            assert ws.subprotocol == "bearer"
            assert await close_code_of(ws) == 4401
        # Something other than auth first.
        async with server.ws("/ws/chat/lobby") as ws:
            await ws.send(json.dumps({"type": "message", "content": "hi"}))
            assert await close_code_of(ws) == 4401
        # No auth at all: closed after the auth timeout.
        async with server.ws("/ws/chat/lobby") as ws:
            assert await close_code_of(ws) == 4401
        # Not JSON: a policy breach.
        async with server.ws("/ws/chat/lobby") as ws:
            await ws.send("{nope")
            assert await close_code_of(ws) == 1008
        # A revoked token (logged out) is refused like any bad one.
        bob = await server.factory.account()
        response = await server.http.post("/api/v1/auth/logout", headers=bob.headers)
        assert response.status_code == 204
        async with server.ws("/ws/chat/lobby", subprotocols=["bearer", bob.access_token]) as ws:
            assert await close_code_of(ws) == 4401
        # A members-only room the user is not in.
        response = await server.http.post(
            "/api/v1/chat/rooms", json={"name": "staff", "is_private": True}, headers=alice.headers
        )
        assert response.status_code == 201
        carol = await server.factory.account()
        async with server.ws("/ws/chat/staff") as ws:
            await auth_first(ws, carol)
            assert await close_code_of(ws) == 4403
        # The owner adds carol: now she may join.
        response = await server.http.post(
            "/api/v1/chat/rooms/staff/members", json={"user_id": carol.id}, headers=alice.headers
        )
        assert response.status_code == 204
        async with server.ws("/ws/chat/staff") as ws:
            await auth_first(ws, carol)
            assert (await next_of(ws, "join"))["user"]["id"] == carol.id
        # An invalid room name is a policy breach.
        async with server.ws("/ws/chat/bad%20name") as ws:
            await auth_first(ws, carol)
            assert await close_code_of(ws) == 1008


async def test_origin_is_checked_against_the_allow_list(live: LiveFactory) -> None:
    async with live(
        cors_origins=["https://app.example.com"], ws_allowed_origins=["https://chat.example.com"]
    ) as server:
        account = await server.factory.account()
        with pytest.raises(InvalidStatus) as refused:
            async with server.ws("/ws/chat/lobby", origin="https://evil.example.net"):
                pass
        assert refused.value.response.status_code == 403
        allowed = ["https://app.example.com", "https://chat.example.com", server.url, None]
        for origin in allowed:
            async with server.ws(
                "/ws/chat/lobby", origin=origin, subprotocols=["bearer", account.access_token]
            ) as ws:
                assert (await next_of(ws, "join"))["user"]["id"] == account.id


async def test_two_clients_see_each_others_messages_in_order_and_history_matches(
    live: LiveFactory,
) -> None:
    async with live() as server:
        alice, bob = await server.factory.account(), await server.factory.account()
        async with (
            server.ws("/ws/chat/general", subprotocols=["bearer", alice.access_token]) as a,
            server.ws("/ws/chat/general", subprotocols=["bearer", bob.access_token]) as b,
        ):
            # Both are in the room once each has seen bob's join.
            await next_of(a, "join")
            await next_of(b, "join")
            for n in range(10):
                await a.send(json.dumps({"type": "message", "content": f"alice {n}"}))
                await b.send(json.dumps({"type": "message", "content": f"bob {n}"}))
            seen_by_a = [await next_of(a, "message") for _ in range(20)]
            seen_by_b = [await next_of(b, "message") for _ in range(20)]
        assert seen_by_a == seen_by_b  # one order for everyone
        ids = [m["id"] for m in seen_by_a]
        assert ids == sorted(ids)
        for name in ("alice", "bob"):
            own = [m["content"] for m in seen_by_a if m["content"].startswith(name)]
            assert own == [f"{name} {n}" for n in range(10)]
        first = seen_by_a[0]
        assert first["room"] == "general"
        assert set(first) == {"type", "id", "room", "user", "content", "created_at"}
        assert first["user"]["username"] in (alice.username, bob.username)

        # History over REST: the same messages, newest first, in cursor pages.
        history: list[dict[str, object]] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 7}
            if cursor:
                params["cursor"] = cursor
            response = await server.http.get(
                "/api/v1/chat/rooms/general/messages", params=params, headers=alice.headers
            )
            assert response.status_code == 200, response.text
            page = response.json()
            history += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert list(reversed(history)) == seen_by_a


async def test_resume_after_disconnect_misses_nothing(live: LiveFactory) -> None:
    async with live() as server:
        alice, bob = await server.factory.account(), await server.factory.account()
        async with server.ws("/ws/chat/resume", subprotocols=["bearer", bob.access_token]) as b:
            async with server.ws(
                "/ws/chat/resume", subprotocols=["bearer", alice.access_token]
            ) as a:
                # In the room once the own join comes back (auth and subscribe follow the
                # handshake); b must be in too before anything it sends counts.
                await next_of(b, "join")
                await next_of(a, "join")
                await b.send(json.dumps({"type": "message", "content": "before"}))
                last_seen = (await next_of(a, "message"))["id"]
            # alice is away: bob goes on talking.
            for n in range(5):
                await b.send(json.dumps({"type": "message", "content": f"missed {n}"}))
            for _ in range(6):
                await next_of(b, "message")
            async with server.ws("/ws/chat/resume") as a:
                await auth_first(a, alice, last_id=last_seen)
                # The missed ones come before anything live, even the own join.
                caught_up = [(await next_of(a, "message"))["content"] for _ in range(5)]
                assert caught_up == [f"missed {n}" for n in range(5)]
                await b.send(json.dumps({"type": "message", "content": "live again"}))
                assert (await next_of(a, "message"))["content"] == "live again"


async def test_message_rules(live: LiveFactory) -> None:
    async with live(
        chat_message_max_length=50, rate_limit_chat_message="5/minute", ws_max_message_bytes=4096
    ) as server:
        account = await server.factory.account()
        bearer = ["bearer", account.access_token]
        async with server.ws("/ws/chat/rules", subprotocols=bearer) as ws:
            await ws.send(json.dumps({"type": "message", "content": "x" * 51}))
            assert (await next_of(ws, "error"))["code"] == "validation_error"
            await ws.send(json.dumps({"type": "message", "content": "   "}))
            assert (await next_of(ws, "error"))["code"] == "validation_error"
            await ws.send(json.dumps({"type": "ping"}))
            assert (await next_of(ws, "pong")) == {"type": "pong"}
            for n in range(3):  # 2 counted already (the invalid ones)
                await ws.send(json.dumps({"type": "message", "content": f"ok {n}"}))
                await next_of(ws, "message")
            await ws.send(json.dumps({"type": "message", "content": "one too many"}))
            error = await next_of(ws, "error")
            assert error["code"] == "rate_limited"
            assert error["retry_after"] >= 1
        async with server.ws("/ws/chat/rules", subprotocols=bearer) as ws:
            await ws.send(json.dumps({"type": "shout", "content": "?"}))
            assert await close_code_of(ws) == 1008
        async with server.ws("/ws/chat/rules", subprotocols=bearer) as ws:
            await ws.send(b"\x00binary")
            assert await close_code_of(ws) == 1008
        async with server.ws("/ws/chat/rules", subprotocols=bearer, max_size=None) as ws:
            await ws.send("x" * 5000)  # over the frame cap: refused by the server
            assert await close_code_of(ws) == 1009


async def test_connections_per_user_are_capped(live: LiveFactory) -> None:
    async with live(ws_max_connections_per_user=2) as server:
        account = await server.factory.account()
        bearer = ["bearer", account.access_token]
        async with (
            server.ws("/ws/chat/cap", subprotocols=bearer) as first,
            server.ws("/ws/notifications", subprotocols=bearer) as second,
        ):
            await next_of(first, "join")
            await second.send(json.dumps({"type": "ping"}))
            await next_of(second, "pong")
            async with server.ws("/ws/chat/cap", subprotocols=bearer) as third:
                assert await close_code_of(third) == 1008


async def test_admin_may_join_members_only_rooms(live: LiveFactory) -> None:
    async with live() as server:
        owner = await server.factory.account()
        admin = await server.factory.account(role=Role.ADMIN)
        await server.http.post(
            "/api/v1/chat/rooms", json={"name": "secret", "is_private": True}, headers=owner.headers
        )
        async with server.ws("/ws/chat/secret", subprotocols=["bearer", admin.access_token]) as ws:
            await next_of(ws, "join")
        stranger = await server.factory.account()
        response = await server.http.get(
            "/api/v1/chat/rooms/secret/messages", headers=stranger.headers
        )
        assert response.status_code == 403
        rooms = await server.http.get("/api/v1/chat/rooms", headers=stranger.headers)
        assert "secret" not in [room["name"] for room in rooms.json()]
        response = await server.http.get(
            "/api/v1/chat/rooms/nowhere/messages", headers=owner.headers
        )
        assert response.status_code == 404
