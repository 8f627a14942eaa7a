import statistics
import time

import httpx
import jwt

from app.auth.models import Role
from tests.support.assertions import assert_envelope
from tests.support.factories import DEFAULT_PASSWORD, Factory
from tests.support.settings import TEST_SECRET


async def test_login_by_username_or_email(client: httpx.AsyncClient, factory: Factory) -> None:
    await factory.register("Login_Name")
    for login in ("Login_Name", "login_name", "LOGIN_NAME@example.com"):
        tokens = await factory.login(login)
        assert tokens["token_type"] == "bearer"
        assert tokens["expires_in"] == 15 * 60
        assert tokens["scope"] == "items:write profile"
        assert tokens["refresh_token"]
        assert tokens["access_token"]


async def test_access_token_claims(factory: Factory) -> None:
    user = await factory.register()
    tokens = await factory.login(user["username"])
    claims = jwt.decode(
        tokens["access_token"], TEST_SECRET, algorithms=["HS256"], audience="app-api"
    )
    assert claims["sub"] == str(user["id"])
    assert claims["type"] == "access"
    assert claims["iss"] == "app"
    assert set(claims["scopes"]) == {"profile", "items:write"}
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["jti"]
    assert claims["sid"]


async def test_requested_scopes_are_narrowed_to_the_role(factory: Factory) -> None:
    user = await factory.register()
    narrowed = await factory.login(user["username"], scope="profile admin")
    assert narrowed["scope"] == "profile"  # admin is not the role's to grant


async def test_unknown_user_and_wrong_password_look_the_same(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    await factory.register("real_user")

    async def attempt(username: str) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        response = await client.post(
            "/api/v1/auth/token", data={"username": username, "password": "Wrong-password-1"}
        )
        return response, time.perf_counter() - started

    wrong_password, _ = await attempt("real_user")
    unknown_user, _ = await attempt("no_such_user")
    for response in (wrong_password, unknown_user):
        error = assert_envelope(response, 401, "invalid_credentials")
        assert error["message"] == "Incorrect username or password"
        assert response.headers["www-authenticate"] == "Bearer"
    # Both paths verify a hash; without the dummy hash, unknown users answer ~50x faster.
    # Interleaved, so a burst of load on a shared machine slows both alike.
    known_times, unknown_times = [], []
    for _ in range(7):
        known_times.append((await attempt("real_user"))[1])
        unknown_times.append((await attempt("no_such_user"))[1])
    known, unknown = statistics.median(known_times), statistics.median(unknown_times)
    assert unknown > known * 0.5, (known, unknown)


async def test_disabled_account_cannot_log_in(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.register()
    await factory.set_fields(user["id"], is_active=False)
    response = await client.post(
        "/api/v1/auth/token", data={"username": user["username"], "password": DEFAULT_PASSWORD}
    )
    assert_envelope(response, 403, "forbidden")


async def test_login_form_errors_are_422(client: httpx.AsyncClient) -> None:
    missing = await client.post("/api/v1/auth/token", data={"username": "x"})
    error = assert_envelope(missing, 422, "validation_error")
    assert "body.password" in {d["field"] for d in error["details"]}  # type: ignore[attr-defined]
    bad_grant = await client.post(
        "/api/v1/auth/token", data={"username": "x", "password": "y", "grant_type": "implicit"}
    )
    assert_envelope(bad_grant, 422, "validation_error")
    as_json = await client.post("/api/v1/auth/token", json={"username": "x", "password": "y"})
    assert_envelope(as_json, 422, "validation_error")


async def test_admin_gets_admin_scope(factory: Factory) -> None:
    admin = await factory.account(Role.ADMIN)
    tokens = await factory.login(admin.username)
    assert tokens["scope"] == "admin items:write profile"


async def test_token_responses_are_not_cached(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.register()
    response = await client.post(
        "/api/v1/auth/token", data={"username": user["username"], "password": DEFAULT_PASSWORD}
    )
    assert response.headers["cache-control"] == "no-store"
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": response.json()["refresh_token"]}
    )
    assert refreshed.headers["cache-control"] == "no-store"
