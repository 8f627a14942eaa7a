"""Refresh rotation with reuse detection, logout, logout-all and password change."""

import asyncio

import httpx
from sqlalchemy import select

from app.auth.models import AuthSession, Role
from tests.support.assertions import assert_envelope
from tests.support.factories import DEFAULT_PASSWORD, Account, Factory


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def me_status(client: httpx.AsyncClient, access_token: str) -> int:
    response = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {access_token}"}
    )
    return response.status_code


async def test_refresh_rotates(client: httpx.AsyncClient, factory: Factory) -> None:
    account = await factory.account()
    response = await refresh(client, account.refresh_token)
    assert response.status_code == 200
    pair = response.json()
    assert pair["refresh_token"] != account.refresh_token
    assert pair["access_token"] != account.access_token
    assert await me_status(client, pair["access_token"]) == 200
    assert (await refresh(client, pair["refresh_token"])).status_code == 200


async def test_reused_refresh_token_revokes_the_family(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    other_device = await factory.login(account.username)
    first = (await refresh(client, account.refresh_token)).json()

    replay = await refresh(client, account.refresh_token)  # the thief, or the victim, replays
    error = assert_envelope(replay, 401, "invalid_refresh_token")
    assert "reuse" in str(error["message"])

    # Everything of that family is dead: the rotated refresh token and the access tokens.
    assert (await refresh(client, first["refresh_token"])).status_code == 401
    assert await me_status(client, first["access_token"]) == 401
    assert await me_status(client, account.access_token) == 401
    # Another login of the same user is a different family and lives on.
    assert await me_status(client, other_device["access_token"]) == 200


async def test_concurrent_refreshes_of_one_token_let_exactly_one_win(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    responses = await asyncio.gather(*(refresh(client, account.refresh_token) for _ in range(4)))
    assert sorted(r.status_code for r in responses).count(200) <= 1
    assert any(r.status_code == 401 for r in responses)


async def test_unknown_and_malformed_refresh_tokens(client: httpx.AsyncClient) -> None:
    assert_envelope(await refresh(client, "never-issued"), 401, "invalid_refresh_token")
    assert_envelope(await refresh(client, ""), 422, "validation_error")
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": 12})
    assert_envelope(response, 422, "validation_error")


async def test_logout_revokes_access_and_refresh(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    other = await factory.login(account.username)
    response = await client.post("/api/v1/auth/logout", headers=account.headers)
    assert response.status_code == 204
    assert await me_status(client, account.access_token) == 401
    assert (await refresh(client, account.refresh_token)).status_code == 401
    assert await me_status(client, other["access_token"]) == 200


async def test_logout_with_another_sessions_refresh_token_ends_both(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    other = await factory.login(account.username)
    response = await client.post(
        "/api/v1/auth/logout",
        headers=account.headers,
        json={"refresh_token": other["refresh_token"]},
    )
    assert response.status_code == 204
    assert await me_status(client, other["access_token"]) == 401


async def test_logout_cannot_touch_someone_elses_session(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    alice, bob = await factory.account(), await factory.account()
    await client.post(
        "/api/v1/auth/logout", headers=alice.headers, json={"refresh_token": bob.refresh_token}
    )
    assert await me_status(client, bob.access_token) == 200


async def test_logout_all_ends_every_session(client: httpx.AsyncClient, factory: Factory) -> None:
    account = await factory.account()
    sessions = [await factory.login(account.username) for _ in range(2)]
    assert (
        await client.post("/api/v1/auth/logout-all", headers=account.headers)
    ).status_code == 204
    for tokens in [*sessions, {"access_token": account.access_token}]:
        assert await me_status(client, tokens["access_token"]) == 401
    assert (await refresh(client, sessions[0]["refresh_token"])).status_code == 401
    # Logging in again works at once.
    assert await me_status(client, (await factory.login(account.username))["access_token"]) == 200


async def test_revocation_is_durable(client: httpx.AsyncClient, factory: Factory) -> None:
    account = await factory.account()
    await client.post("/api/v1/auth/logout", headers=account.headers)
    async with factory.app.state.services.sessionmaker() as session:
        row = (await session.execute(select(AuthSession))).scalars().one()
    assert row.revoked_at is not None
    assert row.revoked_reason == "logout"


async def test_change_password_revokes_other_sessions(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    other = await factory.login(account.username)
    new_password = "Brand-new-pass-2"
    response = await client.post(
        "/api/v1/auth/password",
        headers=account.headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": new_password},
    )
    assert response.status_code == 204
    assert await me_status(client, account.access_token) == 200  # this session stays
    assert await me_status(client, other["access_token"]) == 401
    await factory.login(account.username, password=new_password)
    old = await client.post(
        "/api/v1/auth/token", data={"username": account.username, "password": DEFAULT_PASSWORD}
    )
    assert old.status_code == 401


async def test_change_password_checks_the_current_one(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    wrong = await client.post(
        "/api/v1/auth/password",
        headers=account.headers,
        json={"current_password": "Not-the-one-1", "new_password": "Brand-new-pass-2"},
    )
    assert_envelope(wrong, 400, "invalid_credentials")
    weak = await client.post(
        "/api/v1/auth/password",
        headers=account.headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "weak"},
    )
    assert_envelope(weak, 422, "validation_error")


async def test_role_change_or_deactivation_ends_sessions(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin: Account = await factory.account(Role.SUPERUSER)
    user = await factory.account()
    response = await client.patch(
        f"/api/v1/users/{user.id}", headers=admin.headers, json={"is_active": False}
    )
    assert response.status_code == 200
    assert await me_status(client, user.access_token) == 401
    assert (await refresh(client, user.refresh_token)).status_code == 401
