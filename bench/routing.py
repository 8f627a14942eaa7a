"""What finding the route costs, in process: the service's routes copied into one flat list
(app/core/routing.py) against the same routers through FastAPI's lazy `include_router`.

    taskset -c 1 uv run python -m bench.routing [--requests 2000] [--repeats 5]

Both apps are built by `create_app` on the same settings (embedded mode, migrated SQLite),
started, and called directly as ASGI apps (no socket, no server) with requests that stop
soon after routing: a 401 from a protected route early and late in the table, an unknown
path (a 404 walks the whole table), `/health`, and one public read. CPU time per request,
best of the interleaved repetitions, for both apps in the same run.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/routing.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, MutableMapping
from contextlib import AsyncExitStack
from typing import Any
from unittest import mock

from fastapi import APIRouter, FastAPI

from app import main as app_main
from app import routes
from app.core.config import Settings
from app.core.errors import ERROR_RESPONSES
from app.core.logging import configure_logging
from app.core.migrate import upgrade_to_head

PATHS = {
    "health": "/health",
    "users/me, no token (2nd router of v1)": "/api/v1/users/me",
    "orders, no token (20th router of v1)": "/api/v1/orders/",
    "posts, a missing post's comments (last router of v1)": "/api/v1/posts/1/comments/",
    "unknown path (404)": "/api/v1/nothing-here",
}
WARMUP = 200


def include_lazily(app: FastAPI, settings: Settings) -> None:
    """`routes.include_routes` as FastAPI's `include_router` does it at every level."""
    api_v1 = APIRouter(responses=ERROR_RESPONSES)
    api_v2 = APIRouter(prefix=routes.api_v2.prefix, responses=ERROR_RESPONSES)
    for router in routes.V1_ROUTERS:
        api_v1.include_router(router)
    for router in routes.V2_ROUTERS:
        api_v2.include_router(router)
    for router in routes.BEFORE_V1:
        app.include_router(router)
    app.include_router(api_v1, prefix=settings.api_v1_prefix)
    for router in routes.AFTER_V1:
        app.include_router(api_v2 if router is routes.api_v2 else router)


def build(settings: Settings, include: Callable[[FastAPI, Settings], None]) -> FastAPI:
    with mock.patch.object(app_main, "include_routes", include):
        return app_main.create_app(settings)


async def _call(app: FastAPI, path: str) -> int:
    scope: dict[str, Any] = {
        "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "headers": [(b"host", b"localhost")],
        "http_version": "1.1", "scheme": "http", "server": ("localhost", 80),
        "client": ("127.0.0.1", 50000), "asgi": {"version": "3.0"}, "state": {},
    }  # fmt: skip
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def per_request_us(app: FastAPI, path: str, count: int) -> float:
    for _ in range(WARMUP):
        await _call(app, path)
    start = time.process_time()
    for _ in range(count):
        await _call(app, path)
    return (time.process_time() - start) / count * 1e6


async def measure(settings: Settings, count: int, repeats: int) -> dict[str, Any]:
    apps = {"flat": build(settings, routes.include_routes), "lazy": build(settings, include_lazily)}
    results: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        for label, path in PATHS.items():
            statuses = {name: await _call(app, path) for name, app in apps.items()}
            best: dict[str, float] = {}
            for _ in range(repeats):
                for name, app in apps.items():
                    figure = await per_request_us(app, path, count)
                    best[name] = min(best.get(name, figure), figure)
            results[label] = {
                "status": statuses,
                **{name: round(figure, 1) for name, figure in best.items()},
                "flat_over_lazy": round(best["flat"] / best["lazy"], 3),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    # The access line would be most of a 401's cost and is the same for both apps.
    settings = Settings(
        environment="development", app_data_dir=data_dir, log_level="WARNING",
        rate_limit_default="100000000/minute",
    )  # fmt: skip
    upgrade_to_head(settings)
    configure_logging(settings)
    results = asyncio.run(measure(settings, args.requests, args.repeats))
    print(json.dumps({"unit": "cpu_us_per_request", "paths": results}, indent=2))


if __name__ == "__main__":
    main()
