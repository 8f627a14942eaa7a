"""Several API processes sharing one PostgreSQL database and one Redis behave as one service:
a client's rate limit, a logout and a cache invalidation reach every process, and /metrics
of a multi-worker process counts the requests of all its workers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.apis import (
    ApiFleet,
    ApiProcess,
    ApiSpec,
    api_env,
    bearer,
    error_code,
    fresh_redis_db,
    login_tokens,
    poll_until,
    register,
    session_id_of,
    unique_name,
    wait_for_window_headroom,
)
from tests.support.servers import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

ITEMS = "/api/v1/items/"
ME = "/api/v1/users/me"
# Logical Redis databases, one per group of processes, so their counters never meet.
PAIR_DB, RATE_LIMITED_DB, METRICS_DB = 1, 2, 3
REVOCATION_DEADLINE_SECONDS = 1.0


@dataclass(frozen=True)
class Pair:
    a: ApiProcess
    b: ApiProcess
    redis_url: str


@pytest.fixture(scope="module")
def pair(
    system_database: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Two API processes (generous limits) sharing the database and a Redis database."""
    redis_url = fresh_redis_db(redis_server, PAIR_DB)
    data_dir = tmp_path_factory.mktemp("pair")
    env = api_env(data_dir, database_url=system_database, redis_url=redis_url)
    fleet = ApiFleet(data_dir / "api-logs")
    try:
        a, b = fleet.start(ApiSpec("A", env), ApiSpec("B", env))
        yield Pair(a, b, redis_url)
    finally:
        fleet.stop()


@pytest.fixture
def clients(pair: Pair) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with (
        httpx.Client(base_url=pair.a.url, timeout=10) as a,
        httpx.Client(base_url=pair.b.url, timeout=10) as b,
    ):
        yield a, b


def redis_keys(url: str, pattern: str) -> list[bytes]:
    with redis.Redis.from_url(url) as client:
        return list(client.scan_iter(match=pattern))


# -- 1a: one client's rate limit, counted by every process -----------------------------------


def test_rate_limit_is_counted_across_processes(
    fleet: ApiFleet, system_database: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    limit, period = 20, 3600  # "20/hour": a window boundary almost never falls in the test
    env = api_env(
        tmp_path,
        database_url=system_database,
        redis_url=fresh_redis_db(redis_server, RATE_LIMITED_DB),
        RATE_LIMIT_DEFAULT=f"{limit}/hour",
    )
    a, b = fleet.start(ApiSpec("limited-A", env), ApiSpec("limited-B", env))
    wait_for_window_headroom(period, headroom=15)
    with (
        httpx.Client(base_url=a.url, timeout=10) as client_a,
        httpx.Client(base_url=b.url, timeout=10) as client_b,
    ):
        alternating = [client_a, client_b]
        remaining = []
        for n in range(limit):
            response = alternating[n % 2].get(ITEMS)
            assert response.status_code == 200, (n, response.text)
            assert response.headers["X-RateLimit-Limit"] == str(limit)
            remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        # One budget, spent by both: each answer counts the other process's requests too.
        assert remaining == list(range(limit - 1, -1, -1))

        for client in (alternating[limit % 2], alternating[(limit + 1) % 2]):  # 21st and 22nd
            refused = client.get(ITEMS)
            assert refused.status_code == 429, refused.text
            assert error_code(refused) == "rate_limited"
            assert 1 <= int(refused.headers["Retry-After"]) <= period
            assert refused.headers["X-RateLimit-Remaining"] == "0"
            assert client.get("/health").status_code == 200  # probes are never limited


# -- 1b: a logout through one process is refused by the other --------------------------------


def test_logout_through_one_process_is_refused_by_the_other(
    pair: Pair, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    client_a, client_b = clients
    username = unique_name("logout")
    register(client_a, username)
    token = login_tokens(client_a, username)["access_token"]

    me = client_b.get(ME, headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json()["username"] == username
    session_id = session_id_of(token)
    assert redis_keys(pair.redis_url, f"*{session_id}*"), "B did not store a session snapshot"

    assert client_a.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204

    polled = poll_until(
        lambda: client_b.get(ME, headers=bearer(token)),
        lambda response: response.status_code == 401,
        timeout=REVOCATION_DEADLINE_SECONDS,
        what="B refusing a token logged out through A",
    )
    assert error_code(polled.response) == "unauthorized"
    assert client_a.get(ME, headers=bearer(token)).status_code == 401


def test_logout_all_through_one_process_is_refused_by_the_other(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    client_a, client_b = clients
    username = unique_name("logoutall")
    register(client_a, username)
    first, second = login_tokens(client_a, username), login_tokens(client_a, username)
    for tokens in (first, second):  # both sessions live, and snapshotted, on B
        assert client_b.get(ME, headers=bearer(tokens["access_token"])).status_code == 200

    logout = client_a.post("/api/v1/auth/logout-all", headers=bearer(first["access_token"]))
    assert logout.status_code == 204

    for tokens in (first, second):
        poll_until(
            partial(client_b.get, ME, headers=bearer(tokens["access_token"])),
            lambda response: response.status_code == 401,
            timeout=REVOCATION_DEADLINE_SECONDS,
            what="B refusing a token after logout-all through A",
        )
    refresh = client_b.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert refresh.status_code == 401, refresh.text


# -- 1c: a write through one process is read fresh through the other -------------------------


def item_in_listing(client: httpx.Client, item_id: int) -> dict[str, object] | None:
    response = client.get(ITEMS)
    assert response.status_code == 200, response.text
    return next((item for item in response.json()["items"] if item["id"] == item_id), None)


def test_cache_invalidated_through_one_process_is_fresh_on_the_other(
    pair: Pair, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    client_a, client_b = clients
    username = unique_name("cache")
    register(client_a, username)
    token = login_tokens(client_a, username)["access_token"]
    created = client_a.post(
        ITEMS, json={"title": f"before {username}", "price": "9.99"}, headers=bearer(token)
    )
    assert created.status_code == 201, created.text
    item_id = created.json()["id"]

    for _ in range(2):  # the first read fills B's cache, the second is served from it
        read = client_b.get(f"{ITEMS}{item_id}")
        assert read.status_code == 200, read.text
        assert read.json()["title"] == f"before {username}"
        listed = item_in_listing(client_b, item_id)
        assert listed is not None
        assert listed["title"] == f"before {username}"
    # The entries are in B's memory: the shared Redis never evicts, so nothing a client can
    # multiply goes there. Only the namespace's generation does, and A's write reaches B by it.
    keys = redis_keys(pair.redis_url, "*items*")
    assert [key for key in keys if b"generation" not in key] == [], "entries in the shared Redis"
    assert b"cache:items:generation" in keys

    patched = client_a.patch(
        f"{ITEMS}{item_id}", json={"title": f"after {username}"}, headers=bearer(token)
    )
    assert patched.status_code == 200, patched.text

    read = client_b.get(f"{ITEMS}{item_id}")
    assert read.status_code == 200, read.text
    assert read.json()["title"] == f"after {username}"
    listed = item_in_listing(client_b, item_id)
    assert listed is not None
    assert listed["title"] == f"after {username}"

    deleted = client_a.delete(f"{ITEMS}{item_id}", headers=bearer(token))
    assert deleted.status_code == 204, deleted.text
    gone = client_b.get(f"{ITEMS}{item_id}")
    assert gone.status_code == 404, gone.text
    assert error_code(gone) == "not_found"
    assert item_in_listing(client_b, item_id) is None


# -- 1d: /metrics of a multi-worker process counts every worker -----------------------------

LIST_SERIES = {"method": "GET", "route": ITEMS, "status": "200"}
MIN_REQUESTS, BATCH, MAX_REQUESTS = 200, 50, 2000


def fresh_connections(api: ApiProcess) -> httpx.Client:
    """A client that opens a new connection for every request (the kernel hands each to
    whichever worker accepts first), safe to share between threads."""
    return httpx.Client(
        base_url=api.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    )


def list_requests_by_worker(metrics_dir: Path) -> dict[str, float]:
    """Per worker process, its own count of the series (each writes `counter_<pid>.db`)."""
    counts = {}
    for path in sorted(metrics_dir.glob("counter_*.db")):
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for sample in family.samples:
                if sample.name == "http_requests_total" and sample.labels == LIST_SERIES:
                    counts[path.stem.removeprefix("counter_")] = sample.value
    return counts


def scraped_list_requests(client: httpx.Client) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.labels == LIST_SERIES:
                return float(sample.value)
    return 0.0


def test_metrics_count_the_requests_of_every_worker(
    fleet: ApiFleet, system_database: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus"  # ours, so that each worker's own file can be read
    metrics_dir.mkdir()
    env = api_env(
        tmp_path,
        database_url=system_database,
        redis_url=fresh_redis_db(redis_server, METRICS_DB),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    (api,) = fleet.start(ApiSpec("two-workers", env, workers=2))

    sent = 0
    with fresh_connections(api) as client, ThreadPoolExecutor(max_workers=8) as pool:
        # Batches of concurrent requests until both workers have answered some.
        while sent < MIN_REQUESTS or len(list_requests_by_worker(metrics_dir)) < 2:
            assert sent < MAX_REQUESTS, (
                f"only one worker answered {sent} requests: {list_requests_by_worker(metrics_dir)}"
            )
            statuses = list(pool.map(lambda _: client.get(ITEMS).status_code, range(BATCH)))
            assert statuses == [200] * BATCH, statuses
            sent += BATCH

        # A worker counts a request just after answering it: allow that instant, then every
        # scrape, whichever worker answers it, must give the sum of both.
        eventually(
            lambda: scraped_list_requests(client) == sent,
            timeout=2,
            interval=0.02,
            what=f"a scrape counting all {sent} requests",
        )
        by_worker = list_requests_by_worker(metrics_dir)
        assert len(by_worker) >= 2, by_worker  # more if the supervisor replaced a worker
        assert sum(by_worker.values()) == sent, by_worker
        scrapes = [scraped_list_requests(client) for _ in range(10)]
        assert scrapes == [float(sent)] * 10, (scrapes, sent, by_worker)
