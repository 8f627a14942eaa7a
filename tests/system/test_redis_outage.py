"""Redis dies under a running API process and comes back: the service degrades and recovers.

While Redis is down, reads keep working from the database, readiness says `degraded`, login
refuses with 503 (its limit fails closed) and token checks fall back to the database, so a
revoked token stays revoked. When Redis returns, on the same port and empty, everything
recovers without restarting the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.apis import (
    ApiFleet,
    ApiSpec,
    api_env,
    bearer,
    error_code,
    login,
    login_tokens,
    poll_until,
    register,
    unique_name,
)
from tests.support.servers import RedisServer, running
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

ITEMS = "/api/v1/items/"
ME = "/api/v1/users/me"
RECOVERY_DEADLINE_SECONDS = 15.0


@pytest.fixture
def doomed_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own: it is killed and revived, which the shared one must not be."""
    with running(RedisServer(), "redis-server") as server:
        yield server


def readiness(client: httpx.Client) -> tuple[int, dict[str, object]]:
    response = client.get("/health/ready")
    body: dict[str, object] = response.json()
    return response.status_code, body


def backend_errors(client: httpx.Client, policy: str) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if (
                sample.name == "rate_limit_backend_errors_total"
                and sample.labels.get("policy") == policy
            ):
                return float(sample.value)
    return 0.0


def test_service_degrades_without_redis_and_recovers_when_it_returns(
    fleet: ApiFleet, system_database: str, doomed_redis: RedisServer, tmp_path: Path
) -> None:
    env = api_env(tmp_path, database_url=system_database, redis_url=doomed_redis.url)
    (api,) = fleet.start(ApiSpec("redis-outage", env))

    with httpx.Client(base_url=api.url, timeout=10) as client:
        # Before: a user with a live session and a logged-out one, an item read (and cached).
        username = unique_name("outage")
        register(client, username)
        token = login_tokens(client, username)["access_token"]
        revoked = login_tokens(client, username)["access_token"]
        assert client.post("/api/v1/auth/logout", headers=bearer(revoked)).status_code == 204
        created = client.post(
            ITEMS, json={"title": f"kept {username}", "price": "3.50"}, headers=bearer(token)
        )
        assert created.status_code == 201, created.text
        item_id = created.json()["id"]
        assert client.get(f"{ITEMS}{item_id}").status_code == 200
        assert client.get(ITEMS).status_code == 200
        status, body = readiness(client)
        assert (status, body["status"]) == (200, "ok"), body

        doomed_redis.kill()

        # Reads come from the database; the general limit lets them through.
        read = client.get(f"{ITEMS}{item_id}")
        assert read.status_code == 200, read.text
        assert read.json()["title"] == f"kept {username}"
        listing = client.get(ITEMS)
        assert listing.status_code == 200, listing.text
        assert item_id in [item["id"] for item in listing.json()["items"]]

        # Readiness reuses its answer for READINESS_CACHE_SECONDS (1 s): the next round sees it.
        def degraded() -> tuple[int, dict[str, object]] | None:
            answer = readiness(client)
            return answer if answer[1]["status"] == "degraded" else None

        status, body = eventually(
            degraded, timeout=10, what="readiness to say degraded once Redis is gone"
        )
        assert status == 200, body
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert checks["redis"]["status"] == "down", body
        assert checks["database"]["status"] == "ok", body

        # Login's limit fails closed: no counter, no login.
        refused = login(client, username)
        assert refused.status_code == 503, refused.text
        assert error_code(refused) == "service_unavailable"

        # Tokens are checked against the database: the live one works, the revoked one not.
        me = client.get(ME, headers=bearer(token))
        assert me.status_code == 200, me.text
        assert me.json()["username"] == username
        assert client.get(ME, headers=bearer(revoked)).status_code == 401

        assert backend_errors(client, "default") > 0
        assert backend_errors(client, "login") > 0

        doomed_redis.revive()  # same port, empty: nothing was persisted

        poll_until(
            lambda: client.get("/health/ready"),
            lambda response: response.status_code == 200 and response.json()["status"] == "ok",
            timeout=RECOVERY_DEADLINE_SECONDS,
            interval=0.1,
            what="readiness back to ok after Redis returned",
        )
        relogin = poll_until(
            lambda: login(client, username),
            lambda response: response.status_code != 503,
            timeout=RECOVERY_DEADLINE_SECONDS,
            interval=0.1,
            what="login available again after Redis returned",
        ).response
        assert relogin.status_code == 200, relogin.text
        fresh = relogin.json()["access_token"]
        assert client.get(ME, headers=bearer(fresh)).status_code == 200
        assert client.get(ME, headers=bearer(token)).status_code == 200
        # The tombstone died with Redis, but the database still says revoked.
        assert client.get(ME, headers=bearer(revoked)).status_code == 401
        assert client.get(f"{ITEMS}{item_id}").status_code == 200
