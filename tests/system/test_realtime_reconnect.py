"""Nothing missed across a pub/sub reconnect: two `app api` processes over a Redis of this
test's own, killed while clients of both are connected. What is published meanwhile (chat
messages from a client of the other process, notifications from a worker-like process) never
crosses Redis; once each process is subscribed again its live clients get it from the
database, in order and once, followed by what is sent after."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.realtime.service import NotificationService
from tests.support.apis import (
    ApiFleet,
    ApiProcess,
    ApiSpec,
    account,
    api_env,
    unique_name,
    ws_url,
)
from tests.support.live import next_of
from tests.support.servers import RedisServer, running
from tests.support.settings import TEST_SECRET

pytestmark = pytest.mark.postgres

DEADLINE = 30.0  # the hub's reconnect backoff reaches 5 s; two loaded processes on 2 cores
DURING = 5


@pytest.fixture
def doomed_redis() -> Iterator[RedisServer]:
    """Killed and revived mid-test, which the shared Redis must not be."""
    with running(RedisServer(), "redis-server") as server:
        yield server


async def messages_until(ws: ClientConnection, last: str) -> list[str]:
    """Every chat message's content up to and including `last` (duplicates kept)."""
    contents: list[str] = []
    async with asyncio.timeout(DEADLINE):
        while not contents or contents[-1] != last:
            frame = json.loads(await ws.recv())
            if frame["type"] == "message":
                contents.append(frame["content"])
    return contents


async def notifications_until(ws: ClientConnection, last: int) -> list[int]:
    ids: list[int] = []
    async with asyncio.timeout(DEADLINE):
        while not ids or ids[-1] != last:
            frame = json.loads(await ws.recv())
            if frame["type"] == "notification":
                ids.append(frame["id"])
    return ids


async def sse_ids_until(lines: object, last: int) -> list[int]:
    """Event ids of an SSE stream (only notifications carry one) up to `last`."""
    ids: list[int] = []
    assert hasattr(lines, "__anext__")
    async with asyncio.timeout(DEADLINE):
        while not ids or ids[-1] != last:
            line: str = await lines.__anext__()
            if line.startswith("id:"):
                ids.append(int(line.removeprefix("id:").strip()))
    return ids


async def notify(settings: Settings, user_id: int, title: str) -> int:
    """Store and publish as a Celery worker does; with Redis down, stored only."""
    engine = create_engine(settings)
    try:
        async with (
            NotificationService.from_settings(settings) as notifier,
            create_sessionmaker(engine)() as session,
        ):
            sent = await notifier.send_to_user(
                session=session, user_id=user_id, kind="test", title=title
            )
            return sent.id
    finally:
        await engine.dispose()


def hub_resubscribed(process: ApiProcess) -> bool:
    return "hub subscribed to Redis again" in process.stderr.read_text(errors="replace")


async def test_messages_and_notifications_published_during_a_redis_restart_arrive_once_in_order(
    system_database: str, doomed_redis: RedisServer, fleet: ApiFleet, tmp_path: Path
) -> None:
    env = api_env(tmp_path / "data", database_url=system_database, redis_url=doomed_redis.url)
    a, b = fleet.start(ApiSpec("A", env), ApiSpec("B", env))
    alice_id, alice = account(a)
    bob_id, bob = account(b)
    settings = Settings(
        _env_file=None,
        secret_key=TEST_SECRET,
        database_url=system_database,
        redis_url=doomed_redis.url,
        app_data_dir=tmp_path / "worker",
    )
    room = unique_name("room")
    async with (
        connect(ws_url(a, f"/ws/chat/{room}"), subprotocols=["bearer", alice]) as on_a,  # type: ignore[list-item]
        connect(ws_url(b, f"/ws/chat/{room}"), subprotocols=["bearer", bob]) as on_b,  # type: ignore[list-item]
        connect(ws_url(a, "/ws/notifications"), subprotocols=["bearer", alice]) as alerts,  # type: ignore[list-item]
        httpx.AsyncClient(base_url=a.url, timeout=DEADLINE) as http,
        http.stream(
            "GET", "/api/v1/notifications/stream", headers={"Authorization": f"Bearer {alice}"}
        ) as stream,
    ):
        assert stream.status_code == 200
        sse = stream.aiter_lines()
        while (await next_of(on_a, "join"))["user"]["id"] != alice_id:
            pass
        while (await next_of(on_b, "join"))["user"]["id"] != bob_id:
            pass
        await alerts.send('{"type": "ping"}')
        await next_of(alerts, "pong")
        # Live through Redis first: both processes are subscribed.
        await on_b.send(json.dumps({"type": "message", "content": "before"}))
        assert await messages_until(on_a, "before") == ["before"]
        assert await messages_until(on_b, "before") == ["before"]
        first = await notify(settings, alice_id, "before")
        assert await notifications_until(alerts, first) == [first]
        assert await sse_ids_until(sse, first) == [first]

        doomed_redis.kill()
        during = [f"during {i}" for i in range(DURING)]
        for content in during:  # B stores each; its publish fails: Redis is gone
            await on_b.send(json.dumps({"type": "message", "content": content}))
        missed = [await notify(settings, alice_id, f"during {i}") for i in range(DURING)]
        doomed_redis.revive()

        # After the reconnect: one more of each, live or caught up, whichever comes first.
        await on_b.send(json.dumps({"type": "message", "content": "after"}))
        last = await notify(settings, alice_id, "after")
        assert await messages_until(on_a, "after") == [*during, "after"]
        assert await messages_until(on_b, "after") == [*during, "after"]
        assert await notifications_until(alerts, last) == [*missed, last]
        assert await sse_ids_until(sse, last) == [*missed, last]
    # The catch-up, not a client reconnect, delivered them: both processes said so.
    assert hub_resubscribed(a)
    assert hub_resubscribed(b)
