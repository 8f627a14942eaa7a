import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from prometheus_client import REGISTRY
from redis._parsers import _AsyncHiredisParser
from redis.asyncio import Redis
from sqlalchemy import select

from app.core.ratelimit import MemoryCounters, RedisCounters, create_limiter
from app.core.redis import create_pipelined, create_redis
from app.email.models import Email
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


PROXIED = {"trusted_proxies": "127.0.0.1/32"}  # X-Forwarded-For names the client
LOGIN = "/api/v1/auth/token"
RESET = "/api/v1/auth/password-reset/request"


async def _login(
    client: httpx.AsyncClient, name: str, ip: str, password: str = "Wrong-guess-1"
) -> httpx.Response:
    return await client.post(
        LOGIN, data={"username": name, "password": password}, headers={"X-Forwarded-For": ip}
    )


async def test_login_attempts_are_limited_per_client(build_client: BuildClient) -> None:
    async with build_client(rate_limit_login="6/hour", **PROXIED) as (_, client):
        # One address spraying many accounts hits the per-client limit...
        for n in range(6):
            assert (await _login(client, f"spray{n}", "198.51.100.1")).status_code == 401
        assert_envelope(await _login(client, "spray9", "198.51.100.1"), 429, "rate_limited")
        # ...and so does an IPv6 host rotating through the addresses of its /64.
        for n in range(6):
            assert (
                await _login(client, f"spray{n}", f"2001:db8:5:6::{n + 1:x}")
            ).status_code == 401
        assert (await _login(client, "spray9", "2001:db8:5:6:ffff::1")).status_code == 429
        assert (await _login(client, "spray9", "2001:db8:5:7::1")).status_code == 401


async def test_username_and_email_share_one_failure_budget(build_client: BuildClient) -> None:
    async with build_client(rate_limit_login_account="3/hour", **PROXIED) as (app, client):
        factory = Factory(client, app)
        await factory.register("Victim")
        await factory.register("other")
        ip = "203.0.113.1"
        for name in ("victim", "VICTIM@example.com", "Victim"):
            assert (await _login(client, name, ip)).status_code == 401
        for name in ("victim@EXAMPLE.COM", "vIcTiM"):
            blocked = await _login(client, name, ip, password=DEFAULT_PASSWORD)
            assert_envelope(blocked, 429, "rate_limited")
            assert int(blocked.headers["retry-after"]) >= 1
        # Another account is untouched, from the same client.
        assert (await _login(client, "other", ip)).status_code == 401


async def test_a_strangers_failures_do_not_lock_the_owner_out(build_client: BuildClient) -> None:
    async with build_client(rate_limit_login_account="3/hour", **PROXIED) as (app, client):
        await Factory(client, app).register("owner")
        answers = [(await _login(client, "owner", "198.51.100.66")).status_code for _ in range(5)]
        assert answers == [401, 401, 401, 429, 429]
        # The stranger's budget is spent; the owner, elsewhere, logs in.
        assert (await _login(client, "owner", "203.0.113.8", DEFAULT_PASSWORD)).status_code == 200
        # The refusal reads the same for an account that doesn't exist.
        for _ in range(3):
            await _login(client, "nobody", "198.51.100.66")
        unknown = await _login(client, "nobody", "198.51.100.66")
        known = await _login(client, "owner", "198.51.100.66")
        messages = [assert_envelope(r, 429, "rate_limited")["message"] for r in (known, unknown)]
        assert [str(m).split(";")[0] for m in messages] == [
            "Too many failed logins (a password reset lifts this)"
        ] * 2


async def test_concurrent_guesses_cannot_slip_past_the_failure_budget(
    build_client: BuildClient,
) -> None:
    limits = {"rate_limit_login_account": "3/hour", "rate_limit_login_account_global": "5/hour"}
    async with build_client(**limits, **PROXIED) as (app, client):
        await Factory(client, app).register("crowded")
        # Each attempt is counted before its password is checked: twenty at once from one
        # client get exactly the client's three guesses, from twenty clients the global five.
        one = await asyncio.gather(*(_login(client, "crowded", "198.51.100.9") for _ in range(20)))
        assert sorted(r.status_code for r in one) == [401] * 3 + [429] * 17
        many = await asyncio.gather(
            *(_login(client, "crowded", f"203.0.113.{n + 100}") for n in range(20))
        )
        assert sorted(r.status_code for r in many) == [401] * 2 + [429] * 18


async def test_budgets_do_not_tell_which_addresses_have_an_account(
    build_client: BuildClient,
) -> None:
    async with build_client(rate_limit_login_account="2/hour", **PROXIED) as (app, client):
        await Factory(client, app).register("known")
        ip = "198.51.100.77"
        answers = {}
        for name in ("known", "unknown"):
            spent = [await _login(client, f"{name}@example.com", ip) for _ in range(3)]
            # Another spelling of the address: no account has it, whether or not one has the
            # address itself, so it has its own budget in both cases.
            variant = await _login(client, f"{name}+x@example.com", ip)
            answers[name] = [r.status_code for r in [*spent, variant]]
        assert answers["known"] == answers["unknown"] == [401, 401, 429, 401]


async def test_a_login_the_hasher_refused_is_no_failure(build_client: BuildClient) -> None:
    limits = {"rate_limit_login_account": "6/hour", "password_hash_concurrency": 1,
              "password_hash_max_waiting_per_thread": 1}  # fmt: skip
    async with build_client(**limits, **PROXIED) as (app, client):
        await Factory(client, app).register("busy")
        ip = "203.0.113.50"
        flood = await asyncio.gather(*(_login(client, "busy", ip) for _ in range(6)))
        statuses = [r.status_code for r in flood]
        checked = statuses.count(401)
        assert checked + statuses.count(503) == 6
        assert statuses.count(503) >= 1  # the hasher did refuse some
        # Only the guesses that were checked count: the rest of the budget is still there.
        after = [(await _login(client, "busy", ip)).status_code for _ in range(7 - checked)]
        assert after == [401] * (6 - checked) + [429]


async def test_success_does_not_consume_the_failure_budget(build_client: BuildClient) -> None:
    limits = {"rate_limit_login_account": "2/hour", "rate_limit_login_account_global": "3/hour"}
    async with build_client(**limits, **PROXIED) as (app, client):
        await Factory(client, app).register("regular")
        ip = "203.0.113.9"
        for _ in range(5):
            assert (await _login(client, "regular", ip, DEFAULT_PASSWORD)).status_code == 200
        assert (await _login(client, "regular", ip)).status_code == 401
        # A success forgives this client's failures (the global count keeps them).
        assert (await _login(client, "regular", ip, DEFAULT_PASSWORD)).status_code == 200
        assert (await _login(client, "regular", ip)).status_code == 401
        assert (await _login(client, "regular", ip)).status_code == 401
        assert (await _login(client, "regular", ip)).status_code == 429


async def test_the_global_budget_blocks_and_a_completed_reset_clears_it(
    build_client: BuildClient,
) -> None:
    limits = {"rate_limit_login_account": "100/hour", "rate_limit_login_account_global": "4/hour"}
    async with build_client(**limits, **PROXIED) as (app, client):
        account = await Factory(client, app).register("target")
        # Guesses spread over many clients spend the account's global budget...
        for n in range(4):
            assert (await _login(client, "target", f"198.51.100.{n + 1}")).status_code == 401
        owner_ip = "203.0.113.20"
        refused = await _login(client, "target@example.com", owner_ip, DEFAULT_PASSWORD)
        assert_envelope(refused, 429, "rate_limited")
        # ...and the owner gets back in through the reset mail.
        headers = {"X-Forwarded-For": owner_ip}
        asked = await client.post(RESET, json={"email": account["email"]}, headers=headers)
        assert asked.status_code == 202
        token = await _last_reset_token(app, account["email"])
        new_password = "Brand-new-pass-2"
        reset = await client.post(
            "/api/v1/auth/password-reset",
            json={"token": token, "new_password": new_password},
            headers=headers,
        )
        assert reset.status_code == 204
        assert (await _login(client, "target", owner_ip, new_password)).status_code == 200
        assert (await _login(client, "target", "198.51.100.1")).status_code == 401


async def test_ipv6_clients_are_limited_per_network(build_client: BuildClient) -> None:
    async with build_client(**TIGHT, **PROXIED) as (_, client):

        async def get(ip: str) -> int:
            response = await client.get("/api/v1/items/", headers={"X-Forwarded-For": ip})
            return response.status_code

        # Six addresses of one /64 are one client with one budget...
        rotating = [f"2001:db8:a:b:{n:x}::{n + 1:x}" for n in range(6)]
        assert [await get(ip) for ip in rotating] == [200] * 5 + [429]
        # ...another /64 is another client.
        assert await get("2001:db8:a:c::1") == 200
        # An IPv4 client seen through a dual-stack socket is the IPv4 client.
        assert [await get("203.0.113.30") for _ in range(5)] == [200] * 5
        assert await get("::ffff:203.0.113.30") == 429


async def test_ipv6_prefix_is_a_setting(build_client: BuildClient) -> None:
    async with build_client(**TIGHT, **PROXIED, rate_limit_ipv6_prefix=48) as (_, client):
        for n in range(5):
            headers = {"X-Forwarded-For": f"2001:db8:a:{n:x}::1"}
            assert (await client.get("/api/v1/items/", headers=headers)).status_code == 200
        headers = {"X-Forwarded-For": "2001:db8:a:ffff::1"}
        assert (await client.get("/api/v1/items/", headers=headers)).status_code == 429


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("victim@example.com", "VICTIM@Example.COM"),
        ("victim@example.com", "ｖｉｃｔｉｍ＠ｅｘａｍｐｌｅ．ｃｏｍ"),  # noqa: RUF001
        ("victim@example.com", "victim+anything@example.com"),
        ("victim@bücher.example", "victim@xn--bcher-kva.example"),
        ("victim@example.com", "victim@example.com."),
    ],
    ids=["case", "full-width", "plus-tag", "idn", "trailing-dot"],
)
async def test_spellings_of_one_address_share_the_reset_budget(
    build_client: BuildClient, first: str, second: str
) -> None:
    async with build_client(rate_limit_password_reset="1/hour", **PROXIED) as (_, client):
        # Each request from its own client: only the per-address budget is shared.
        one = await client.post(
            RESET, json={"email": first}, headers={"X-Forwarded-For": "203.0.113.1"}
        )
        assert one.status_code in (202, 422)
        two = await client.post(
            RESET, json={"email": second}, headers={"X-Forwarded-For": "203.0.113.2"}
        )
        assert_envelope(two, 429, "rate_limited")
        other = await client.post(
            RESET,
            json={"email": "someone-else@example.com"},
            headers={"X-Forwarded-For": "203.0.113.3"},
        )
        assert other.status_code == 202


async def test_verification_and_reset_mails_share_the_mailbox_budget(
    build_client: BuildClient,
) -> None:
    # Three mails: the sign-up's welcome spends the first (sign-ups mail the address too).
    async with build_client(rate_limit_password_reset="3/hour", **PROXIED) as (app, client):
        account = await Factory(client, app).account(username="Inbox")
        verify = "/api/v1/auth/verify/request"
        assert (await client.post(verify, headers=account.headers)).status_code == 202
        tagged = account.email.replace("@", "+spam@").upper()
        other_client = {"X-Forwarded-For": "203.0.113.40"}
        asked = await client.post(RESET, json={"email": tagged}, headers=other_client)
        assert asked.status_code == 202
        assert_envelope(await client.post(verify, headers=account.headers), 429, "rate_limited")


async def _last_reset_token(app: FastAPI, recipient: str) -> str:
    async with app.state.services.sessionmaker() as session:
        email = (
            await session.execute(
                select(Email)
                .where(Email.recipient == recipient, Email.template == "reset")
                .order_by(Email.id.desc())
                .limit(1)
            )
        ).scalar_one()
    assert email.context is not None
    link: str = email.context["link"]
    return parse_qs(urlsplit(link).query)["token"][0]


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


def test_redis_replies_go_through_the_hiredis_parser(tmp_path: Path) -> None:
    """hiredis is a dependency for its C reply parser (bench/RESULTS.md); redis-py drops it
    silently when it is missing or too old, so check every Redis client on the hot path: the
    shared client, the limiter's pipelined one (hiredis itself), and the library storage the
    limiter falls back to for a URL the pipelined client doesn't take."""
    settings = make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0")  # never connected
    client = create_redis(settings)
    assert client is not None
    limiter = create_limiter(settings, create_pipelined(settings.redis_url))
    assert isinstance(limiter.storage, RedisCounters)
    tls = make_settings(tmp_path, redis_url="rediss://127.0.0.1:1/0")
    assert create_pipelined(tls.redis_url) is None
    storage = create_limiter(tls, None).storage
    assert isinstance(storage, RedisStorage)
    assert isinstance(storage.bridge, RedispyBridge)
    limiter_client = storage.bridge.get_connection()
    assert isinstance(limiter_client, Redis)
    for redis in (client, limiter_client):
        pool = redis.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        assert isinstance(connection._parser, _AsyncHiredisParser)


async def test_memory_counters_count_per_window_and_forget_ended_ones() -> None:
    now = [1000.0]
    counters = MemoryCounters(clock=lambda: now[0])
    assert [await counters.incr("a", 60) for _ in range(3)] == [1, 2, 3]
    assert await counters.incr("b", 10) == 1  # keys count apart
    assert await counters.incr("a", 60, amount=-1) == 2  # a refund
    now[0] += 30  # "b"'s window has ended: a new one starts at 1
    assert await counters.incr("b", 10) == 1
    assert await counters.incr("a", 60) == 3  # "a"'s has not
    await counters.clear("a")
    assert await counters.incr("a", 60) == 1
    now[0] += 61  # every window over: the next count sweeps them all out
    await counters.incr("c", 5)
    assert len(counters) == 1
