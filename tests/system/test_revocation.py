"""Revocation reaches live channels across processes (issue 13, item 4).

Two `app api` processes over one Redis. A user holds a WebSocket and an SSE stream on A;
whatever ends their sessions happens on B: logout, logout everywhere, a password change or
reset, an admin's role change, deactivation, soft and hard delete. A closes the WebSocket
with the documented code (4401; 4403 for a role change) and ends the stream with
`event: revoked`, within the 1 s target (asserted against a generous bound), without
touching anyone else's connection; the old token answers 401 on A at once. The re-check
period is set far above the bound here, so only the hub's event can close them in time.

Then Redis dies: the event is lost, and the periodic re-check ends the channels instead,
within its period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.auth.models import ActionToken, Role, TokenPurpose, User
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker, utcnow
from app.core.security import hash_opaque_token, new_opaque_token
from tests.support.apis import (
    PASSWORD,
    ApiFleet,
    ApiProcess,
    ApiSpec,
    api_env,
    bearer,
    fresh_redis_db,
    login_tokens,
    register,
    unique_name,
)
from tests.support.servers import RedisServer, running
from tests.support.settings import TEST_SECRET

pytestmark = pytest.mark.postgres

REVOKE_DB = 9
TARGET_SECONDS = 1.0  # what the issue asks; reported
BOUND_SECONDS = 3.0  # what is asserted: a loaded 2-core CI machine must not flake
DEADLINE = 15.0
NEW_PASSWORD = "Another-password-2"
ME = "/api/v1/users/me"
STREAM = "/api/v1/notifications/stream"


@dataclass
class Person:
    id: int
    username: str
    token: str  # the session whose channels are watched
    other_token: str  # a second session of the same user


def ws_url(process: ApiProcess, path: str) -> str:
    return process.url.replace("http://", "ws://", 1) + path


async def set_role(database_url: str, data_dir: Path, user_id: int, role: Role) -> None:
    """Behind the API's back, before the user logs in: the test's admins and victims."""
    engine = create_engine(_settings(database_url, data_dir))
    try:
        async with create_sessionmaker(engine)() as session:
            user = await session.get(User, user_id)
            assert user is not None
            user.role = role
            await session.commit()
    finally:
        await engine.dispose()


async def reset_token(database_url: str, data_dir: Path, user_id: int) -> str:
    """What the reset mail would carry (the mail itself is tested in tests/auth)."""
    raw = new_opaque_token()
    engine = create_engine(_settings(database_url, data_dir))
    try:
        async with create_sessionmaker(engine)() as session:
            now = utcnow()
            session.add(
                ActionToken(
                    user_id=user_id,
                    purpose=TokenPurpose.RESET_PASSWORD,
                    token_hash=hash_opaque_token(raw),
                    created_at=now,
                    expires_at=now + timedelta(hours=1),
                )
            )
            await session.commit()
    finally:
        await engine.dispose()
    return raw


def _settings(database_url: str, data_dir: Path) -> Settings:
    return Settings(
        _env_file=None, secret_key=TEST_SECRET, database_url=database_url, app_data_dir=data_dir
    )


async def person(
    process: ApiProcess, database_url: str, data_dir: Path, role: Role = Role.USER
) -> Person:
    name = unique_name("rv")
    with httpx.Client(base_url=process.url, timeout=DEADLINE) as client:
        register(client, name)
        probe = login_tokens(client, name)["access_token"]
        user_id = int(client.get(ME, headers=bearer(probe)).json()["id"])
        if role is not Role.USER:
            await set_role(database_url, data_dir, user_id, role)
        token = login_tokens(client, name)["access_token"]
        other = login_tokens(client, name)["access_token"]
    return Person(user_id, name, token, other)


@asynccontextmanager
async def socket(process: ApiProcess, token: str) -> AsyncIterator[ClientConnection]:
    """A notifications WebSocket, answering pings: it is registered once it has answered."""
    async with connect(
        ws_url(process, "/ws/notifications"),
        subprotocols=["bearer", token],  # type: ignore[list-item]
        open_timeout=DEADLINE,
        close_timeout=2,
    ) as ws:
        await ws.send('{"type": "ping"}')
        async with asyncio.timeout(DEADLINE):
            assert '"pong"' in str(await ws.recv())
        yield ws


class Stream:
    """An SSE stream over a real HTTP response, opened once the server said `connected`."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def until_end(self) -> list[str]:
        """Every line until the server ends the stream."""
        return [line async for line in self.lines]


@asynccontextmanager
async def stream(process: ApiProcess, token: str) -> AsyncIterator[Stream]:
    async with (
        httpx.AsyncClient(base_url=process.url, timeout=DEADLINE) as client,
        client.stream("GET", STREAM, headers=bearer(token)) as response,
    ):
        assert response.status_code == 200
        opened = Stream(response)
        async with asyncio.timeout(DEADLINE):
            assert await anext(opened.lines) == ": connected"
        yield opened


async def closed_with(ws: ClientConnection, within: float) -> int:
    """Wait on the socket itself (no sleep) for the server's close frame; its code."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(within):
            async for _ in ws:
                pass
    received = ws.protocol.close_rcvd
    assert received is not None, f"not closed within {within}s (state {ws.state.name})"
    return received.code


async def still_open(ws: ClientConnection) -> None:
    await ws.send('{"type": "ping"}')
    async with asyncio.timeout(DEADLINE):
        assert '"pong"' in str(await ws.recv())


def revoked_payload(lines: list[str]) -> dict[str, object]:
    """The data of the stream's `revoked` event, which must be its last."""
    start = lines.index("event: revoked")
    assert not [line for line in lines[start + 2 :] if line and not line.startswith(":")], lines
    data = lines[start + 1]
    assert data.startswith("data: "), lines
    payload: dict[str, object] = json.loads(data.removeprefix("data: "))
    return payload


async def notified(stream: Stream, title: str) -> None:
    """The stream delivers a notification with this title: it is alive and subscribed."""
    async with asyncio.timeout(DEADLINE):
        async for line in stream.lines:
            if line.startswith("data: ") and title in line:
                return
    raise AssertionError("the stream ended")


# -- the event, on B -----------------------------------------------------------------------


@dataclass
class Scene:
    b: ApiProcess
    victim: Person
    admin: Person
    database_url: str
    data_dir: Path


async def end_sessions(event: str, scene: Scene) -> None:
    victim, admin = scene.victim, scene.admin
    async with httpx.AsyncClient(base_url=scene.b.url, timeout=DEADLINE) as b:
        if event == "logout":
            response = await b.post("/api/v1/auth/logout", headers=bearer(victim.token))
        elif event == "logout_all":
            response = await b.post("/api/v1/auth/logout-all", headers=bearer(victim.other_token))
        elif event == "password_change":  # from the other session, which stays
            response = await b.post(
                "/api/v1/auth/password",
                json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
                headers=bearer(victim.other_token),
            )
        elif event == "password_reset":
            token = await reset_token(scene.database_url, scene.data_dir, victim.id)
            response = await b.post(
                "/api/v1/auth/password-reset", json={"token": token, "new_password": NEW_PASSWORD}
            )
        elif event == "role_change":  # an admin demoted by a superuser
            response = await b.patch(
                f"/api/v1/users/{victim.id}", json={"role": "user"}, headers=bearer(admin.token)
            )
        elif event == "deactivate":
            response = await b.patch(
                f"/api/v1/users/{victim.id}", json={"is_active": False}, headers=bearer(admin.token)
            )
        elif event == "soft_delete":
            response = await b.delete(f"/api/v1/users/{victim.id}", headers=bearer(admin.token))
        else:
            assert event == "hard_delete"
            response = await b.delete(
                f"/api/v1/users/{victim.id}", params={"hard": "true"}, headers=bearer(admin.token)
            )
    assert response.status_code in (200, 204), response.text


EVENTS = ["logout", "logout_all", "password_change", "password_reset", "role_change",
          "deactivate", "soft_delete", "hard_delete"]  # fmt: skip
CLOSE_CODE = {event: 4403 if event == "role_change" else 4401 for event in EVENTS}
KEEPS_OTHER_SESSION = {"logout", "password_change"}


@pytest.fixture(scope="module")
def pair(
    system_database: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiProcess, ApiProcess]]:
    """A and B for every event: starting processes is the slow part of these tests."""
    base = tmp_path_factory.mktemp("revocation")
    env = api_env(
        base / "data",
        database_url=system_database,
        redis_url=fresh_redis_db(redis_server, REVOKE_DB),
        WS_SESSION_RECHECK_SECONDS="300",  # the event must do it, not the re-check
    )
    fleet = ApiFleet(base / "api-logs")
    try:
        a, b = fleet.start(ApiSpec("A", env), ApiSpec("B", env))
        yield a, b
    finally:
        fleet.stop()


@pytest.mark.parametrize("event", EVENTS)
async def test_ending_sessions_on_b_ends_live_channels_on_a(
    pair: tuple[ApiProcess, ApiProcess],
    system_database: str,
    tmp_path: Path,
    event: str,
) -> None:
    a, b = pair
    victim_role = Role.ADMIN if event == "role_change" else Role.USER
    victim = await person(a, system_database, tmp_path, victim_role)
    bystander = await person(a, system_database, tmp_path)
    admin = await person(a, system_database, tmp_path, Role.SUPERUSER)
    scene = Scene(b, victim, admin, system_database, tmp_path)
    async with (
        socket(a, victim.token) as watched,
        socket(a, victim.other_token) as other_session,
        socket(a, bystander.token) as unrelated,
        stream(a, victim.token) as victim_stream,
        stream(a, bystander.token) as unrelated_stream,
    ):
        started = time.monotonic()
        await end_sessions(event, scene)
        answered = time.monotonic() - started
        code = await closed_with(watched, DEADLINE)
        ws_closed = time.monotonic() - started
        async with asyncio.timeout(DEADLINE):
            lines = await victim_stream.until_end()
        sse_ended = time.monotonic() - started

        print(f"\n{event}: request {answered * 1000:.0f} ms, WebSocket closed after "
              f"{ws_closed * 1000:.0f} ms, SSE ended after {sse_ended * 1000:.0f} ms")  # fmt: skip
        assert code == CLOSE_CODE[event]
        assert ws_closed < BOUND_SECONDS, f"closed after {ws_closed:.2f}s"
        assert sse_ended < BOUND_SECONDS, f"stream ended after {sse_ended:.2f}s"
        assert revoked_payload(lines)["code"] == CLOSE_CODE[event]

        # Nobody else's channels: another user's, and the victim's other session when the
        # event leaves it alive.
        await still_open(unrelated)
        if event in KEEPS_OTHER_SESSION:
            await still_open(other_session)
        else:
            assert await closed_with(other_session, DEADLINE) == CLOSE_CODE[event]
        title = unique_name("still-here")
        async with httpx.AsyncClient(base_url=b.url, timeout=DEADLINE) as client:
            sent = await client.post(
                "/api/v1/notifications/broadcast",
                json={"title": title, "body": "after the revocation"},
                headers=bearer(admin.token),
            )
            assert sent.status_code == 201, sent.text
        await notified(unrelated_stream, title)

    # The old token is refused on A at once, with the envelope's 401 (never a 500 or 409).
    async with httpx.AsyncClient(base_url=a.url, timeout=DEADLINE) as client:
        response = await client.get(ME, headers=bearer(victim.token))
        assert response.status_code == 401, response.text
        created = await client.post(
            "/api/v1/items/", json={"title": "ghost", "price": "1.00"}, headers=bearer(victim.token)
        )
        assert created.status_code == 401, created.text
        reconnect = await client.get(STREAM, headers=bearer(victim.token))
        assert reconnect.status_code == 401, reconnect.text


# -- when the event is lost ------------------------------------------------------------------

RECHECK_SECONDS = 1.0


@pytest.fixture
def doomed_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own: it is killed, which the shared one must not be."""
    with running(RedisServer(), "redis-server") as server:
        yield server


async def test_channels_end_within_the_recheck_period_when_redis_is_down(
    fleet: ApiFleet, system_database: str, doomed_redis: RedisServer, tmp_path: Path
) -> None:
    env = api_env(
        tmp_path / "data",
        database_url=system_database,
        redis_url=doomed_redis.url,
        WS_SESSION_RECHECK_SECONDS=str(RECHECK_SECONDS),
    )
    (api,) = fleet.start(ApiSpec("recheck", env))
    victim = await person(api, system_database, tmp_path)
    async with (
        socket(api, victim.token) as watched,
        socket(api, victim.other_token) as kept,
        stream(api, victim.token) as victim_stream,
    ):
        doomed_redis.kill()  # the event can't be published, nor any cache entry written
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE) as client:
            response = await client.post("/api/v1/auth/logout", headers=bearer(victim.token))
        assert response.status_code == 204, response.text
        code = await closed_with(watched, DEADLINE)
        closed = time.monotonic() - started
        async with asyncio.timeout(DEADLINE):
            lines = await victim_stream.until_end()
        print(f"\nRedis down: WebSocket closed after {closed * 1000:.0f} ms "
              f"(re-check every {RECHECK_SECONDS:.0f} s)")  # fmt: skip
        assert code == 4401
        assert closed < RECHECK_SECONDS + BOUND_SECONDS
        assert revoked_payload(lines)["code"] == 4401
        await still_open(kept)
    doomed_redis.revive()  # for a clean shutdown, as deployed: Redis comes back
