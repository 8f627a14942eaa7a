import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.main import create_app
from tests.support.assertions import assert_envelope
from tests.support.factories import DEFAULT_PASSWORD, Factory
from tests.support.processes import free_port
from tests.support.settings import BuildClient, make_settings

TIGHT = {"rate_limit_default": "5/hour"}


@pytest.fixture(autouse=True)
def _fresh_window() -> None:
    """Windows are aligned to the clock; don't start a counted run at the end of one."""
    remaining = 3600 - time.time() % 3600
    if remaining < 5:
        time.sleep(remaining + 0.1)


async def test_global_limit_counts_per_client_and_answers_429(build_client: BuildClient) -> None:
    async with build_client(**TIGHT) as (_, client):
        remaining = []
        for _ in range(5):
            response = await client.get("/api/v1/items/")
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit"] == "5"
            remaining.append(int(response.headers["x-ratelimit-remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        refused = await client.get("/api/v1/items/")
        error = assert_envelope(refused, 429, "rate_limited")
        assert "retry" in str(error["message"]).lower()
        assert 0 < int(refused.headers["retry-after"]) <= 3600
        # Another client has its own budget; probes are never limited.
        other = await client.get("/api/v1/items/", headers={"X-Forwarded-For": "203.0.113.9"})
        assert other.status_code == 429  # the header is not believed: no trusted proxy
        assert (await client.get("/health")).status_code == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    build_client: BuildClient,
) -> None:
    async with build_client(**TIGHT, trusted_proxies="127.0.0.1/32") as (_, client):
        for _ in range(5):
            await client.get("/api/v1/items/", headers={"X-Forwarded-For": "203.0.113.1"})
        spent = await client.get("/api/v1/items/", headers={"X-Forwarded-For": "203.0.113.1"})
        assert spent.status_code == 429
        # A client can't dodge its limit by prepending addresses: the nearest untrusted hop wins.
        spoofed = await client.get(
            "/api/v1/items/", headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.1"}
        )
        assert spoofed.status_code == 429
        fresh = await client.get("/api/v1/items/", headers={"X-Forwarded-For": "203.0.113.2"})
        assert fresh.status_code == 200


async def test_login_is_limited_per_client_and_per_account(build_client: BuildClient) -> None:
    limits = {"rate_limit_login": "6/hour", "rate_limit_login_account": "3/hour",
              "trusted_proxies": "127.0.0.1/32"}  # fmt: skip
    async with build_client(**limits) as (app, client):
        factory = Factory(client, app)
        await factory.register("victim")
        await factory.register("other")

        async def login(user: str, ip: str) -> httpx.Response:
            return await client.post(
                "/api/v1/auth/token",
                data={"username": user, "password": "Wrong-guess-1"},
                headers={"X-Forwarded-For": ip},
            )

        # Three guesses at one account from three addresses use up the account's budget...
        for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            assert (await login("victim", ip)).status_code == 401
        blocked = await login("VICTIM", "203.0.113.4")
        assert_envelope(blocked, 429, "rate_limited")
        assert int(blocked.headers["retry-after"]) >= 1
        # ...even with the right password, while another account is untouched.
        right = await client.post(
            "/api/v1/auth/token", data={"username": "victim", "password": DEFAULT_PASSWORD},
            headers={"X-Forwarded-For": "203.0.113.5"},
        )  # fmt: skip
        assert right.status_code == 429
        assert (await login("other", "203.0.113.5")).status_code == 401
        # One address spraying many accounts hits the per-client limit.
        for n in range(6):
            await login(f"spray{n}", "198.51.100.1")
        assert (await login("spray9", "198.51.100.1")).status_code == 429


async def test_register_is_limited_per_client(build_client: BuildClient) -> None:
    async with build_client(rate_limit_register="2/hour") as (app, client):
        factory = Factory(client, app)
        await factory.register()
        await factory.register()
        body = {"username": "third", "email": "t@example.com", "password": DEFAULT_PASSWORD,
                "password_confirm": DEFAULT_PASSWORD}  # fmt: skip
        response = await client.post("/api/v1/auth/register", json=body)
        assert_envelope(response, 429, "rate_limited")


@pytest.fixture
async def dead_redis_client(
    tmp_path: Path, sqlite_template: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The app pointed at a Redis that isn't there (a closed port)."""
    shutil.copy(sqlite_template, tmp_path / "app.db")
    settings = make_settings(tmp_path, None, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client


async def test_redis_down_general_limit_fails_open_security_limits_fail_closed(
    dead_redis_client: httpx.AsyncClient,
) -> None:
    client = dead_redis_client
    before = _sample("rate_limit_backend_errors_total", {"policy": "default"})
    listing = await client.get("/api/v1/items/")
    assert listing.status_code == 200
    assert "x-ratelimit-limit" not in listing.headers
    assert _sample("rate_limit_backend_errors_total", {"policy": "default"}) == before + 1
    login = await client.post("/api/v1/auth/token", data={"username": "a", "password": "b"})
    assert_envelope(login, 503, "service_unavailable")
    body = {"username": "newbie", "email": "n@example.com", "password": DEFAULT_PASSWORD,
            "password_confirm": DEFAULT_PASSWORD}  # fmt: skip
    assert_envelope(
        await client.post("/api/v1/auth/register", json=body), 503, "service_unavailable"
    )
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["redis"]["status"] == "down"


def _sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize("shared_state", ["redis"], indirect=True)
async def test_client_text_in_a_limit_key_is_stored_bounded(
    build_client: BuildClient, shared_state: str
) -> None:
    """A reset request's email is counted before it is validated: a megabyte of it must not
    become a megabyte-long key (an hour's TTL) in the Redis that never evicts."""
    huge = "a" * 1024 * 1024 + "@example.com"
    async with build_client(rate_limit_password_reset="2/hour") as (_, client):
        statuses = [
            (
                await client.post("/api/v1/auth/password-reset/request", json={"email": huge})
            ).status_code
            for _ in range(3)
        ]
        redis = Redis.from_url(shared_state)
        try:
            keys = [key async for key in redis.scan_iter(match="ratelimit*")]
            sizes = [await redis.memory_usage(key) or 0 for key in keys]
        finally:
            await redis.aclose()
    assert statuses[-1] == 429  # still counted: the same text is the same digest
    assert keys
    assert max(len(key) for key in keys) < 200, keys
    assert max(sizes) < 1024, sizes
