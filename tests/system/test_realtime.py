"""Realtime across real `app api` processes: fan-out between two processes through one
Redis (RT-3), graceful shutdown closing WebSockets with 1001 and ending SSE streams on
SIGTERM and SIGINT (OPS-7), and no token from a query string in the logs (RT-1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.realtime.service import NotificationService
from tests.support.apis import (
    RUNNING,
    STOP_DEADLINE_SECONDS,
    ApiFleet,
    ApiSpec,
    account,
    api_env,
    fresh_redis_db,
    unique_name,
    ws_url,
)
from tests.support.live import next_of
from tests.support.servers import RedisServer
from tests.support.settings import TEST_SECRET
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.postgres

FANOUT_DB = 4
CAP_DB = 5
DEADLINE = 15.0


async def test_a_client_of_process_a_receives_what_a_client_of_b_sends(
    system_database: str, redis_server: RedisServer, fleet: ApiFleet, tmp_path: Path
) -> None:
    redis_url = fresh_redis_db(redis_server, FANOUT_DB)
    env = api_env(tmp_path / "data", database_url=system_database, redis_url=redis_url)
    a, b = fleet.start(ApiSpec("A", env), ApiSpec("B", env))
    alice_id, alice = account(a)
    bob_id, bob = account(b)
    room = unique_name("room")
    async with (
        connect(ws_url(a, f"/ws/chat/{room}"), subprotocols=["bearer", alice]) as on_a,  # type: ignore[list-item]
        connect(ws_url(b, f"/ws/chat/{room}"), subprotocols=["bearer", bob]) as on_b,  # type: ignore[list-item]
        connect(ws_url(a, "/ws/notifications"), subprotocols=["bearer", alice]) as alerts,  # type: ignore[list-item]
    ):
        # Each sees its own join once subscribed; A also sees B's join, through Redis.
        while (await next_of(on_a, "join"))["user"]["id"] != alice_id:
            pass
        while (await next_of(on_b, "join"))["user"]["id"] != bob_id:
            pass
        await alerts.send('{"type": "ping"}')
        await next_of(alerts, "pong")

        await on_b.send(json.dumps({"type": "message", "content": "from B"}))
        received = await next_of(on_a, "message")
        assert received["content"] == "from B"
        assert received["user"]["id"] == bob_id
        await on_a.send(json.dumps({"type": "message", "content": "from A"}))
        assert (await next_of(on_b, "message"))["content"] == "from B"
        assert (await next_of(on_b, "message"))["content"] == "from A"

        # A worker-like process (this one: settings only, no hub) notifies alice via Redis.
        settings = Settings(
            _env_file=None,
            secret_key=TEST_SECRET,
            database_url=system_database,
            redis_url=redis_url,
            app_data_dir=tmp_path / "worker",
        )
        engine = create_engine(settings)
        try:
            async with (
                NotificationService.from_settings(settings) as notifier,
                create_sessionmaker(engine)() as session,
            ):
                sent = await notifier.send_to_user(
                    session=session, user_id=alice_id, kind="job.finished", title="Done"
                )
        finally:
            await engine.dispose()
        assert (await next_of(alerts, "notification"))["id"] == sent.id

    # History over REST from either process: the same two messages.
    async with httpx.AsyncClient(base_url=a.url, timeout=DEADLINE) as client:
        response = await client.get(
            f"/api/v1/chat/rooms/{room}/messages", headers={"Authorization": f"Bearer {bob}"}
        )
    assert [m["content"] for m in response.json()["items"]] == ["from A", "from B"]


async def test_the_per_user_cap_holds_across_processes(
    system_database: str, redis_server: RedisServer, fleet: ApiFleet, tmp_path: Path
) -> None:
    """Two connections on A use up a cap of 2: a third on B is refused (1008), and once one
    on A closes, B admits it. Each process alone would have allowed 2."""
    redis_url = fresh_redis_db(redis_server, CAP_DB)
    env = api_env(
        tmp_path / "data",
        database_url=system_database,
        redis_url=redis_url,
        WS_MAX_CONNECTIONS_PER_USER="2",
    )
    a, b = fleet.start(ApiSpec("A", env), ApiSpec("B", env))
    user_id, token = account(a)
    bearer: list[str] = ["bearer", token]
    async with (
        connect(ws_url(a, "/ws/chat/cap"), subprotocols=bearer) as first,  # type: ignore[arg-type]
        connect(ws_url(a, "/ws/notifications"), subprotocols=bearer) as second,  # type: ignore[arg-type]
    ):
        while (await next_of(first, "join"))["user"]["id"] != user_id:
            pass
        await second.send('{"type": "ping"}')
        await next_of(second, "pong")
        async with connect(ws_url(b, "/ws/chat/cap"), subprotocols=bearer) as third:  # type: ignore[arg-type]
            async with asyncio.timeout(DEADLINE):
                await third.wait_closed()
            assert third.protocol.close_rcvd is not None
            assert third.protocol.close_rcvd.code == 1008
        await second.close()

        # The lease goes back in A's next round, without waiting on Redis in the close.
        async def joined_again() -> bool:
            async with connect(ws_url(b, "/ws/chat/cap"), subprotocols=bearer) as again:  # type: ignore[arg-type]
                joined = None
                with contextlib.suppress(ConnectionClosed):
                    joined = await next_of(again, "join")
                if joined is not None:
                    assert joined["user"]["id"] == user_id
                    return True
                assert again.protocol.close_rcvd is not None
                assert again.protocol.close_rcvd.code == 1008  # A has not released yet
                return False

        await eventually_async(joined_again, timeout=DEADLINE, what="A to release the lease")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_closes_websockets_with_1001_and_ends_sse_streams(
    system_database: str, fleet: ApiFleet, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    env = api_env(tmp_path / "data", database_url=system_database)
    (api,) = fleet.start(ApiSpec("stopping", env))
    user_id, token = account(api)
    async with (
        connect(ws_url(api, "/ws/chat/shutdown"), subprotocols=["bearer", token]) as chat,  # type: ignore[list-item]
        httpx.AsyncClient(base_url=api.url, timeout=DEADLINE) as client,
        client.stream(
            "GET", "/api/v1/notifications/stream", headers={"Authorization": f"Bearer {token}"}
        ) as stream,
    ):
        while (await next_of(chat, "join"))["user"]["id"] != user_id:
            pass
        lines = stream.aiter_lines()
        async with asyncio.timeout(DEADLINE):
            assert await anext(lines) == ": connected"

        api.proc.send_signal(stop_signal)

        async with asyncio.timeout(DEADLINE):
            await chat.wait_closed()
        assert chat.protocol.close_rcvd is not None
        assert chat.protocol.close_rcvd.code == 1001
        async with asyncio.timeout(DEADLINE):
            rest = [line async for line in lines]  # ends: the server finished the stream
        assert not [line for line in rest if line.startswith(("data:", "event:"))], rest
    returncode = await asyncio.to_thread(api.proc.wait, STOP_DEADLINE_SECONDS)
    # uvicorn re-raises the signal once it has stopped: SIGINT ends as a clean exit.
    assert returncode in (0, -stop_signal), api.describe()
    log = api.stderr.read_text()
    assert "Cancel" not in log, log  # nothing was left for uvicorn's graceful timeout
    if api in RUNNING:
        RUNNING.remove(api)  # stopped here, with its own signal


async def test_a_token_in_the_query_string_never_reaches_the_logs(
    system_database: str, fleet: ApiFleet, tmp_path: Path
) -> None:
    env = api_env(tmp_path / "data", database_url=system_database)
    (api,) = fleet.start(ApiSpec("logs", env))
    user_id, token = account(api)
    async with connect(ws_url(api, f"/ws/chat/logs?token={token}&last_id=0")) as chat:
        while (await next_of(chat, "join"))["user"]["id"] != user_id:
            pass
    async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE) as client:
        response = await client.get("/api/v1/notifications", params={"token": token})
        assert response.status_code == 401  # REST takes the header only
    api.stop()
    log = api.stdout.read_text() + api.stderr.read_text()
    assert 'WebSocket /ws/chat/logs?token=[redacted]&last_id=0" [accepted]' in log, log
    assert token not in log
    assert token.split(".")[2] not in log  # not even the signature
    assert "route=/ws/chat/{room}" in log  # the app's own line: the template, no query
