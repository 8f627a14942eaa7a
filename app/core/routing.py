"""Including routers by copying their routes, as FastAPI did before 0.137.

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

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute, Route, WebSocketRoute


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
