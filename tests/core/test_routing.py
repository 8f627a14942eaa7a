"""Routers included by copying their routes (app/core/routing.py) must be the routers
FastAPI's own `include_router` gives: the same documented API, the same route table in the
same order, and no lazily included node left for a request to walk through."""

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from app.core.routing import PlainRoute, include_flat
from app.main import create_app
from app.routes import include_routes
from bench.routing import include_lazily, measure
from tests.support.settings import make_settings

PREFIX = "/api/v9"


def _table(routes: list[BaseRoute]) -> list[tuple[object, ...]]:
    return [
        (
            getattr(route, "path", None), sorted(getattr(route, "methods", None) or ()),
            getattr(route, "name", None),
            getattr(getattr(route, "endpoint", None), "__qualname__", None),
        )
        for route in iter_route_contexts(routes)
    ]  # fmt: skip


def test_copied_routes_are_the_routes_include_router_gives(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_v1_prefix=PREFIX)
    flat, lazy = FastAPI(), FastAPI()
    include_routes(flat, settings)
    include_lazily(lazy, settings)

    assert _table(flat.routes) == _table(lazy.routes)
    assert len(_table(flat.routes)) > 90
    assert flat.openapi() == lazy.openapi()
    app = create_app(settings)
    # One flat list: every entry is a route itself (the docs' static files are one mount).
    kinds = (Route, WebSocketRoute, Mount)
    assert all(isinstance(route, kinds) for route in app.router.routes), {
        type(route).__name__ for route in app.router.routes
    }
    # Owned by this app: its dependency overrides reach every copied route.
    assert all(
        route.dependency_overrides_provider is app
        for route in app.router.routes
        if hasattr(route, "dependency_overrides_provider")
    )


def test_a_router_that_includes_another_is_refused_not_dropped() -> None:
    inner = APIRouter(prefix="/inner")

    @inner.get("/x")
    async def x() -> None: ...

    outer = APIRouter()
    outer.include_router(inner)
    with pytest.raises(TypeError, match="_IncludedRouter"):
        include_flat(APIRouter(), outer)


async def test_both_tables_answer_each_bench_path_alike(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """bench.routing's paths, served by the whole app both ways: the same statuses."""
    shutil.copy(sqlite_template, tmp_path / "app.db")
    settings = make_settings(tmp_path)
    results = await measure(settings, count=3, repeats=1)
    statuses = {label: figures["status"] for label, figures in results.items()}
    assert all(status["flat"] == status["lazy"] for status in statuses.values()), statuses
    assert {status["flat"] for status in statuses.values()} == {200, 401, 404}, statuses


def test_plain_routes_stay_plain_when_copied(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    health = [r for r in app.router.routes if getattr(r, "path", None) == "/health"]
    assert len(health) == 1
    assert type(health[0]) is PlainRoute


async def _plain(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


async def _with_query(request: Request, q: int = 0) -> Response:
    return Response(b"{}", media_type="application/json")


def _sync(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


def _needs() -> int:
    return 1


@pytest.mark.parametrize(
    ("endpoint", "options", "reason"),
    [
        (_with_query, {}, "the Request and nothing else"),
        (_plain, {"dependencies": [Depends(_needs)]}, "the Request and nothing else"),
        (_sync, {}, "is async"),
    ],
    ids=["parameter", "dependency", "sync"],
)
def test_a_plain_route_refuses_what_fastapi_would_have_to_solve(
    endpoint: Callable[..., Any], options: dict[str, Any], reason: str
) -> None:
    router = APIRouter()
    with pytest.raises(TypeError, match=reason):
        router.add_api_route("/x", endpoint, route_class_override=PlainRoute, **options)


async def test_a_plain_route_answers_and_is_documented() -> None:
    app = FastAPI()
    app.router.add_api_route("/p", _plain, methods=["GET"], route_class_override=PlainRoute)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/p")).json() == {}
        assert (await http.post("/p")).status_code == 405
    assert "get" in app.openapi()["paths"]["/p"]
