"""The route index (app.core.routing.RouteIndex) picks the route the router's own scan would
pick, for every route of the real app and for paths near them, and leaves everything the
scan does when nothing matches (404, 405, the trailing-slash redirect) to the scan."""

import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from app.core.routing import RouteIndex
from app.main import create_app
from tests.support.assertions import assert_envelope
from tests.support.settings import make_settings

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def first_full(
    routes: tuple[BaseRoute, ...] | list[BaseRoute], scope: dict[str, object]
) -> BaseRoute | None:
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            return route
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app as built, not started: matching needs no services."""
    return create_app(make_settings(tmp_path_factory.mktemp("index")))


def index_of(app: FastAPI) -> RouteIndex:
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    return index


def nearby_paths(app: FastAPI) -> set[str]:
    paths = {"/", "", "/api", "/api/v1", "/api/v1/", "/nope", "//", "/api//v1/items"}
    for route in app.router.routes:
        template: str = route.path  # type: ignore[attr-defined]
        for filler in ("7", "x", "a/b"):
            sample = re.sub(r"\{[^}]+\}", filler, template)
            paths |= {sample, sample + "/", sample.rstrip("/"), sample + "/extra",
                      "/prefix" + sample, sample.upper()}  # fmt: skip
    return paths


def test_the_index_picks_what_the_scan_picks(built: FastAPI) -> None:
    index = index_of(built)
    routes = built.router.routes
    checked = 0
    for path in sorted(nearby_paths(built)):
        candidates = index.candidates(path)
        assert candidates is not None
        for kind in ("http", "websocket"):
            for method in METHODS if kind == "http" else ("GET",):
                scope: dict[str, object] = {
                    "type": kind,
                    "path": path,
                    "root_path": "",
                    "method": method,
                }
                assert first_full(candidates, scope) is first_full(routes, scope), (
                    kind,
                    method,
                    path,
                )
                checked += 1
    assert checked > 3000
    # And it narrows: an item is found among a handful of routes, not the hundred.
    item_candidates = index.candidates("/api/v1/items/7")
    assert item_candidates is not None
    assert len(item_candidates) < len(routes) // 10


def test_routes_added_later_are_found(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    index = index_of(app)
    assert (
        first_full(
            index.candidates("/late/7") or (), {"type": "http", "path": "/late/7", "method": "GET"}
        )
        is None
    )

    @app.get("/late/{n}")
    async def late(n: int) -> dict[str, int]:
        return {"n": n}

    found = first_full(
        index.candidates("/late/7") or (), {"type": "http", "path": "/late/7", "method": "GET"}
    )
    assert found is app.router.routes[-1]


async def test_what_matches_nothing_is_the_scans(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/api/v1/no-such-thing"), 404, "not_found")
    refused = await client.put("/health")
    assert_envelope(refused, 405, "method_not_allowed")
    assert "GET" in refused.headers["allow"]
    redirect = await client.get("/api/v1/items")  # the route is /api/v1/items/
    assert redirect.status_code == 307
    assert redirect.headers["location"].endswith("/api/v1/items/")


async def test_behind_a_root_path_the_index_still_finds_the_route(app: FastAPI) -> None:
    """Mounted under a prefix (uvicorn --root-path), routes match the path after it; the
    index walks that same path instead of leaving every request to the full scan."""
    index = index_of(app)

    async def no_scan(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError(f"the full scan was asked for {scope['path']}")

    index.scan = no_scan
    transport = httpx.ASGITransport(app=app, root_path="/edge")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/edge/health")
    assert response.status_code == 200, response.text
