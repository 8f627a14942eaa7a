"""RT-2/RT-4 over real sockets: a user's notifications on the WebSocket and the SSE stream,
resume after a disconnect, broadcasts, REST listing and read state, and notifications sent
by another process (a worker) in embedded and in Redis mode."""

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from app.auth.models import Role
from tests.support.factories import Account
from tests.support.live import STREAM, LiveFactory, LiveServer, next_of, ready, sse
from tests.support.servers import RedisServer
from tests.support.settings import TEST_SECRET


async def notify(server: LiveServer, user_id: int, title: str) -> dict[str, object]:
    """What the jobs feature calls when a user's task finishes: the service, in-process."""
    async with server.app.state.services.sessionmaker() as session:
        sent = await server.realtime.notifier.send_to_user(
            session=session,
            user_id=user_id,
            kind="job.finished",
            title=title,
            body="Your report is ready",
            data={"task_id": "t-1"},
        )
    return sent.model_dump(mode="json")


async def test_a_finished_job_notifies_its_owner_on_ws_and_sse(live: LiveFactory) -> None:
    async with live() as server:
        alice, bob = await server.factory.account(), await server.factory.account()
        async with (
            server.ws("/ws/notifications", subprotocols=["bearer", alice.access_token]) as ws,
            server.ws("/ws/notifications", subprotocols=["bearer", bob.access_token]) as other,
            sse(server, alice) as stream,
        ):
            await ready(ws)
            await ready(other)
            sent = await notify(server, alice.id, "Report finished")
            on_ws = await next_of(ws, "notification")
            on_sse = await stream.next_notification()
            assert on_ws == sent
            assert on_sse.json() == sent
            assert on_sse.id == str(sent["id"])
            assert on_ws["data"] == {"task_id": "t-1"}
            assert on_ws["broadcast"] is False
            # Bob's socket never carried alice's notification: the next thing on it is a pong.
            await other.send('{"type": "ping"}')
            assert json.loads(await other.recv()) == {"type": "pong"}
            # The socket only sends: anything but a ping is a policy breach.
            await other.send('{"type": "read", "id": 1}')
            await other.wait_closed()
            assert other.protocol.close_rcvd is not None
            assert other.protocol.close_rcvd.code == 1008


async def test_resume_after_disconnect_on_ws_and_sse(live: LiveFactory) -> None:
    async with live() as server:
        alice = await server.factory.account()
        first = await notify(server, alice.id, "one")
        missed = [await notify(server, alice.id, f"missed {n}") for n in range(3)]
        # WebSocket: the last id seen goes in the query string (or the auth message).
        async with server.ws(
            f"/ws/notifications?last_id={first['id']}", subprotocols=["bearer", alice.access_token]
        ) as ws:
            assert [await next_of(ws, "notification") for _ in range(3)] == missed
            live_one = await notify(server, alice.id, "live")
            assert await next_of(ws, "notification") == live_one
        # SSE: the browser sends Last-Event-ID when it reconnects.
        async with sse(server, alice, **{"Last-Event-ID": str(first["id"])}) as stream:
            got = [(await stream.next_notification()).json() for _ in range(4)]
            assert got == [*missed, live_one]


async def test_sse_keep_alive(live: LiveFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # FastAPI sends a keep-alive comment after 15 s of silence; shortened to see it here.
    monkeypatch.setattr("fastapi.routing._PING_INTERVAL", 0.2)
    async with live() as server:
        alice = await server.factory.account()
        async with sse(server, alice) as stream:
            assert (await stream.next(timeout=5)).comments == ["ping"]


async def test_sse_refuses_bad_tokens_in_the_envelope(live: LiveFactory) -> None:
    async with live() as server:
        response = await server.http.get(STREAM, headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        response = await server.http.get(STREAM, params={"token": "nope"})
        assert response.status_code == 401


async def test_broadcast_reaches_everyone_and_read_state_is_per_user(live: LiveFactory) -> None:
    async with live() as server:
        alice, bob = await server.factory.account(), await server.factory.account()
        admin = await server.factory.account(role=Role.ADMIN)
        body = {"title": "Maintenance tonight", "body": "22:00 UTC"}
        response = await server.http.post(
            "/api/v1/notifications/broadcast", json=body, headers=alice.headers
        )
        assert response.status_code == 403
        async with (
            server.ws("/ws/notifications", subprotocols=["bearer", alice.access_token]) as a,
            server.ws("/ws/notifications", subprotocols=["bearer", bob.access_token]) as b,
        ):
            await ready(a)
            await ready(b)
            response = await server.http.post(
                "/api/v1/notifications/broadcast", json=body, headers=admin.headers
            )
            assert response.status_code == 201, response.text
            sent = response.json()
            assert sent["broadcast"] is True
            assert await next_of(a, "notification") == sent
            assert await next_of(b, "notification") == sent
        own = await notify(server, alice.id, "private to alice")

        async def listing(account: Account, **params: str | int | bool) -> list[dict[str, object]]:
            response = await server.http.get(
                "/api/v1/notifications", params=params, headers=account.headers
            )
            assert response.status_code == 200, response.text
            items: list[dict[str, object]] = response.json()["items"]
            return items

        assert [n["id"] for n in await listing(alice)] == [own["id"], sent["id"]]
        assert [n["id"] for n in await listing(bob)] == [sent["id"]]
        # Read state is per user, for broadcasts too.
        response = await server.http.post(
            f"/api/v1/notifications/{sent['id']}/read", headers=alice.headers
        )
        assert response.status_code == 204
        assert [n["id"] for n in await listing(alice, unread_only=True)] == [own["id"]]
        assert [n["id"] for n in await listing(bob, unread_only=True)] == [sent["id"]]
        # Someone else's notification is not there for bob.
        response = await server.http.post(
            f"/api/v1/notifications/{own['id']}/read", headers=bob.headers
        )
        assert response.status_code == 404
        response = await server.http.post("/api/v1/notifications/read-all", headers=bob.headers)
        assert response.status_code == 204
        assert await listing(bob, unread_only=True) == []
        page = await listing(alice, limit=1)
        assert len(page) == 1


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from app.core.config import Settings
    from app.core.db import create_engine, create_sessionmaker
    from app.realtime.service import NotificationService

    async def main() -> None:
        settings = Settings()
        engine = create_engine(settings)
        try:
            async with (
                NotificationService.from_settings(settings) as notifier,
                create_sessionmaker(engine)() as session,
            ):
                sent = await notifier.send_to_user(
                    session=session, user_id=int(sys.argv[1]), kind="job.failed",
                    title="Import failed", body="Line 3", data={},
                )
                print(sent.id)
        finally:
            await engine.dispose()

    asyncio.run(main())
    """
)


@pytest.fixture(params=["embedded", "redis"])
def hub_redis_url(request: pytest.FixtureRequest) -> str | None:
    """No Redis (the in-process hub and the relay), or an emptied real Redis."""
    if request.param == "embedded":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    return server.url


async def test_a_worker_process_notifies_connected_clients(
    live: LiveFactory, hub_redis_url: str | None, tmp_path: Path
) -> None:
    """A separate process with nothing but settings (a Celery worker) sends a notification:
    through Redis in distributed mode, through the database and the API's relay without it."""
    redis_url = hub_redis_url
    async with live(redis_url=redis_url, notification_relay_interval_seconds=0.1) as server:
        alice = await server.factory.account()
        settings = server.app.state.services.settings
        env = {k: v for k, v in os.environ.items() if k.lower() not in type(settings).model_fields}
        env.update(SECRET_KEY=TEST_SECRET, APP_DATA_DIR=str(settings.app_data_dir))
        if settings.database_url:
            env["DATABASE_URL"] = settings.database_url
        if redis_url:
            env["REDIS_URL"] = redis_url
        async with server.ws(
            "/ws/notifications", subprotocols=["bearer", alice.access_token]
        ) as ws:
            await ready(ws)
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER_SCRIPT, str(alice.id),
                env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(60):
                out, err = await worker.communicate()
            assert worker.returncode == 0, err.decode()
            received = await next_of(ws, "notification")
            assert received["id"] == int(out.decode().strip())
            assert received["title"] == "Import failed"
            # Relayed once, not again at the next polls of the look-back window.
            relay = server.realtime.relay
            assert (relay is None) is (redis_url is not None)  # the relay is the no-Redis path
            if relay is not None:
                for _ in range(3):
                    assert await relay.poll_once() == 0
            await ws.send('{"type": "ping"}')
            assert json.loads(await ws.recv()) == {"type": "pong"}
