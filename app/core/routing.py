"""Routing at the cost of a flat list: routers included by copying their routes, as FastAPI
did before 0.137, and a request matched against only the routes its path can reach.

FastAPI 0.137 made `include_router` lazy: the parent keeps the included router as one node
and matches through it on every request, twice per level (`matches`, then `handle`), after
summing the route-list versions of the whole subtree. With two dozen domain routers under
/api/v1 that cost grows with a router's position: measured in-process (bench.routing), a
request to the last router paid ~20 µs per router before it, and an unknown path, which
walks them all, several hundred µs: more than FastAPI's whole bare request.

`include_flat` adds each route of a router to the target as a route of its own, with the
prefix and the target's tags, dependencies and responses merged by the target's own
`add_api_route`, exactly as an eager include did. Matching is then one flat scan of
compiled paths, and the routes are owned by the app that was built (their dependency
overrides are the app's), so apps built with different settings in one process stay apart.
"""

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.telemetry._api import _route_selected  # the route, for FastAPI's own spans
from starlette._utils import get_route_path  # what Route.matches matches against
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute, request_response
from starlette.types import Receive, Scope, Send


def include_flat(target: FastAPI | APIRouter, router: APIRouter, *, prefix: str = "") -> None:
    """Copy `router`'s routes into `target` under `prefix`."""
    # The app's own router: its dependency_overrides_provider is the app.
    into = target.router if isinstance(target, FastAPI) else target
    for route in router.routes:
        _copy(into, route, prefix)


def _copy(target: APIRouter, route: BaseRoute, prefix: str) -> None:
    if isinstance(route, APIRoute):
        target.add_api_route(
            prefix + route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=list(route.tags),
            dependencies=list(route.dependencies),
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=dict(route.responses),
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
            strict_content_type=route.strict_content_type,
            route_class_override=type(route),
        )
    elif isinstance(route, APIWebSocketRoute):
        target.add_api_websocket_route(
            prefix + route.path, route.endpoint, name=route.name,
            dependencies=list(route.dependencies),
        )  # fmt: skip
    elif isinstance(route, Route):
        target.add_route(
            prefix + route.path, route.endpoint, methods=sorted(route.methods or ()),
            name=route.name, include_in_schema=route.include_in_schema,
        )  # fmt: skip
    elif isinstance(route, WebSocketRoute):
        target.add_websocket_route(prefix + route.path, route.endpoint, name=route.name)
    else:
        # A lazily included router (an `include_router` inside a domain) or a mount: not
        # used by this app; refuse it rather than drop its routes silently.
        raise TypeError(
            f"include_flat cannot copy a {type(route).__name__}: include the inner router's "
            "routes with include_flat, not include_router"
        )


class _Node:
    __slots__ = ("children", "routes")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.routes: tuple[BaseRoute, ...] = ()


class RouteIndex:
    """The app router's dispatch, with the scan cut to the routes a path can match.

    Starlette tries every route in order until one matches: 0.75 µs a route, and /items/{id}
    is the 26th of ~100 (~19 µs a request, bench/RESULTS.md). A route's path begins with
    literal segments ("/api/v1/items/" before "{item_id}"), and a path can only match a route
    whose literal segments it begins with. Here those segments form a tree; a request walks
    it along its own path's segments and scans only the routes whose literal part lies on
    that walk, in the router's order, so the first full match is the one the whole scan
    would find. Anything else (no full match: a 404, a 405, a trailing-slash redirect; a
    route of another kind) goes to the router's own scan, unchanged.

    Routes added later (tests add some) are seen: the tree is rebuilt when their count
    changes."""

    def __init__(self, router: APIRouter) -> None:
        self.router = router
        self.scan = router.app
        self._count = -1
        self._root: _Node | None = None

    def _build(self) -> _Node | None:
        routes = self.router.routes
        self._count = len(routes)
        if not all(isinstance(r, Route | WebSocketRoute | Mount) for r in routes):
            return None  # a lazily included router or a Host: the plain scan only
        root = _Node()
        ends: dict[int, list[BaseRoute]] = {}  # id(node) -> routes whose literal part ends there
        for route in routes:
            node = root
            for segment in route.path.split("/"):  # type: ignore[attr-defined]  # all three have one
                if "{" in segment:
                    break
                node = node.children.setdefault(segment, _Node())
            ends.setdefault(id(node), []).append(route)
        order = {id(route): i for i, route in enumerate(routes)}

        def fill(node: _Node, above: list[BaseRoute]) -> None:
            mine = above + ends.get(id(node), [])
            node.routes = tuple(sorted(mine, key=lambda r: order[id(r)]))
            for child in node.children.values():
                fill(child, mine)

        fill(root, [])
        return root

    def candidates(self, path: str) -> tuple[BaseRoute, ...] | None:
        """The routes `path` could match, in order; None: scan them all."""
        if len(self.router.routes) != self._count:
            self._root = self._build()
        node = self._root
        if node is None:
            return None
        for segment in path.split("/"):
            child = node.children.get(segment)
            if child is None:
                break
            node = child
        return node.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            # The path the routes match against: behind a root_path, the part after it.
            routes = self.candidates(get_route_path(scope))
            if routes is not None:
                for route in routes:
                    match, child_scope = route.matches(scope)
                    if match is Match.FULL:  # what APIRouter.app does with it
                        scope.setdefault("router", self.router)
                        scope.update(child_scope)
                        _route_selected(
                            scope=scope,
                            path=getattr(route, "path_format", None),
                            mount=isinstance(route, Mount),
                        )
                        await route.handle(scope, receive, send)
                        return
        await self.scan(scope, receive, send)


def install_route_index(app: FastAPI) -> None:
    """Put a RouteIndex in front of the app router's own scan."""
    router = app.router
    if router.middleware_stack != router.app:  # router-level middleware: leave it as it is
        raise RuntimeError("the app router has middleware of its own; no route index")
    router.middleware_stack = RouteIndex(router)


class PlainRoute(APIRoute):
    """A documented route whose endpoint takes only the Request and returns its Response.

    FastAPI's handler does per request what such an endpoint never needs: two exit stacks, a
    scratch Response for dependencies, the query string parsed, dependencies solved (none),
    the answer validated. For `/health`, which probes call more than anything, that was most
    of what our stack costs over bare FastAPI (bench/RESULTS.md). Here the endpoint runs
    as a plain Starlette endpoint; the OpenAPI document (response model, status, tags) is
    made from the route as for any other. An endpoint with anything FastAPI would have to
    solve (a parameter, a dependency of its own or of its router) is refused when the route
    is made, so none is silently skipped."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        dependant = self.dependant
        extra = (
            dependant.path_params or dependant.query_params or dependant.header_params
            or dependant.cookie_params or dependant.body_params or dependant.dependencies
        )  # fmt: skip
        if extra or list(inspect.signature(endpoint).parameters) != [dependant.request_param_name]:
            raise TypeError(f"{path}: a PlainRoute endpoint takes the Request and nothing else")
        if not inspect.iscoroutinefunction(endpoint):
            raise TypeError(f"{path}: a PlainRoute endpoint is async (it runs on the loop)")
        handler: Callable[[Request], Awaitable[Response]] = endpoint
        self.app = request_response(handler)
