"""What the load benchmark requests, and what it holds the service to: the endpoints (one
request each, repeated by wrk, with the status a correct answer has), the preflight that
checks each answers it, and the goals (`TARGETS`): CPU per request over the ceiling's or
the same-work floor's, and p99/p50, each at most a limit."""

import dataclasses
import json
from typing import Any
from urllib.parse import urlencode

import httpx

from bench.common import BenchError

DEMO_USER = "demo0"
DEMO_PASSWORD = "Demo-password-1"  # what `app seed` gives every demo user
LOGIN_MAX_CONNECTIONS = 8  # Argon2 takes ~100-150 ms of CPU per login: more only queues

FORM = "application/x-www-form-urlencoded"
ITEM_BODY = json.dumps({"title": "bench", "price": "9.99", "currency": "USD"})
LOGIN_BODY = urlencode({"username": DEMO_USER, "password": DEMO_PASSWORD})

ENDPOINTS = (
    "health",  # through every middleware, access log on: the production configuration
    "health_no_access_log",  # the same on a second service started with --no-access-log
    "item_read",
    "item_read_auth",  # the same item with a token: an item and a token snapshot cache hit
    "users_me",
    "items_list",
    "item_create",
    "login",
)
QUIET_SERVICE_ENDPOINTS = frozenset({"health_no_access_log"})
# Endpoints bench/floor_app.py also serves (same paths), for `floor_ratio`.
FLOOR_ENDPOINTS = frozenset(
    {"users_me", "item_read", "item_read_auth", "items_list", "item_create"}
)
LOGIN_FLOOD = "login_flood"
CHOICES = (*ENDPOINTS, LOGIN_FLOOD)


@dataclasses.dataclass(frozen=True, slots=True)
class Goal:
    """A figure the service is held to: `figure` of an endpoint's result at most `limit`."""

    endpoint: str
    limit: float
    what: str
    figure: str = "cpu_ratio_to_ceiling"


# The Goal table, as CPU per request over the bare app's /health (same run), or over
# the same-work floor's for the same endpoint; each endpoint's p99/p50 is held to TAIL_LIMIT.
TARGETS = {
    "health_full_stack": Goal("health", 1.15, "GET /health, all middleware, access log on"),
    "users_me": Goal("users_me", 4.0, "GET /api/v1/users/me"),
    "item_read_auth_cache_hit": Goal(
        "item_read_auth", 3.0, "GET /api/v1/items/{id} with a token, item and token cached"
    ),
    "items_list": Goal("items_list", 4.0, "GET /api/v1/items/?per_page=20, cached"),
    "item_create": Goal("item_create", 10.0, "POST /api/v1/items/"),
    **{
        f"{name}_floor": Goal(name, 1.3, f"{name}: CPU per request over the floor's", "floor_ratio")
        for name in sorted(FLOOR_ENDPOINTS)
    },
}
TAIL_LIMIT = 3.0  # p99 / p50 at 32 connections, every endpoint


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One request, repeated by wrk, and the status a correct answer has."""

    path: str
    method: str = "GET"
    expected_status: int = 200
    body: str | None = None
    content_type: str | None = None
    authorized: bool = False
    max_connections: int | None = None


HEALTH = Target("/health")

LOGIN = Target(
    "/api/v1/auth/token",
    method="POST",
    body=LOGIN_BODY,
    content_type=FORM,
    max_connections=LOGIN_MAX_CONNECTIONS,
)


def service_targets(item_id: int) -> dict[str, Target]:
    targets = {
        "health": HEALTH,
        "health_no_access_log": HEALTH,
        "item_read": Target(f"/api/v1/items/{item_id}"),
        "item_read_auth": Target(f"/api/v1/items/{item_id}", authorized=True),
        "users_me": Target("/api/v1/users/me", authorized=True),
        "items_list": Target("/api/v1/items/?per_page=20"),
        "item_create": Target(
            "/api/v1/items/",
            method="POST",
            expected_status=201,
            body=ITEM_BODY,
            content_type="application/json",
            authorized=True,
        ),
        "login": LOGIN,
    }
    assert tuple(targets) == ENDPOINTS
    return targets


def request_headers(target: Target, token: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if target.content_type:
        headers["Content-Type"] = target.content_type
    if target.authorized:
        if token is None:
            raise BenchError(f"{target.path} needs a token")
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise BenchError(
            f"{what}: expected {status}, got {response.status_code}: {response.text[:500]}"
        )


def get_token(client: httpx.Client) -> str:
    response = client.post(
        "/api/v1/auth/token", data={"username": DEMO_USER, "password": DEMO_PASSWORD}
    )
    _expect(response, 200, "login")
    return str(response.json()["access_token"])


def get_item_id(client: httpx.Client) -> int:
    response = client.get("/api/v1/items/", params={"per_page": 1})
    _expect(response, 200, "item listing")
    items = response.json()["items"]
    if not items:
        raise BenchError("the seeded database has no items")
    return int(items[0]["id"])


def preflight(client: httpx.Client, name: str, target: Target, token: str) -> None:
    """One request by hand: wrk would count a 3xx (or a 200 where 201 is due) as success."""
    response = client.request(
        target.method,
        target.path,
        content=target.body,
        headers=request_headers(target, token),
    )
    _expect(response, target.expected_status, f"{name} ({target.method} {target.path})")


def evaluate_targets(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target in each mode that measured its endpoint: ratio, target (a maximum), met."""
    found: dict[str, Any] = {}
    for mode, report in modes.items():
        endpoints: dict[str, Any] = report["endpoints"]
        goals = dict(TARGETS)
        goals |= {
            f"{name}_tail": Goal(name, TAIL_LIMIT, f"{name}: p99 / p50", "tail_ratio")
            for name in endpoints
        }
        for name, goal in goals.items():
            endpoint = endpoints.get(goal.endpoint)
            if endpoint is None:
                continue
            ratio = endpoint.get(goal.figure)
            found[f"{name}_{mode}"] = {
                "what": goal.what,
                "mode": mode,
                "endpoint": goal.endpoint,
                "figure": goal.figure,
                "ratio": ratio,
                "target": goal.limit,
                "met": ratio is not None and ratio <= goal.limit,
                "ceiling_drift": report["ceiling_drift"],
            }
    return found
