"""Per-route rate limits as dependencies (the global limit is a middleware).

Any route takes a limit of its own with `rate_limit`:

    @router.get("/search", dependencies=[Depends(rate_limit(setting="rate_limit_search"))])
    @router.post("/things", dependencies=[Depends(rate_limit("30/minute"))])

Counted per client (`client_of`), one storage round trip per request (app.core.ratelimit);
every answer carries X-RateLimit-Limit/-Remaining/-Reset, and a 429 also Retry-After.
"""

import functools
from typing import Any

from fastapi import Request, Response
from starlette.requests import HTTPConnection

from app.core.dependencies import services_of
from app.core.errors import AppError, ServiceUnavailable
from app.core.limit_keys import client_key
from app.core.ratelimit import Decision, LimiterUnavailable, Policy, RateLimiter
from app.core.request_context import client_ip_of


class RateLimited(AppError):
    status, code = 429, "rate_limited"


def client_of(connection: HTTPConnection) -> str:
    """The caller's rate-limit identity: what every per-client limit counts against."""
    prefix = services_of(connection).settings.rate_limit_ipv6_prefix
    return client_key(client_ip_of(connection.scope), ipv6_prefix=prefix)


async def check(
    limiter: RateLimiter, policy: Policy, *identifiers: str, message: str = "Too many attempts"
) -> Decision | None:
    """Count one hit; over the limit raises 429 (with Retry-After), and a fail-closed policy
    whose store is down raises 503. None when the store is down and the policy fails open."""
    try:
        decision = await limiter.hit(policy, *identifiers)
    except LimiterUnavailable as exc:
        raise ServiceUnavailable("This operation is briefly unavailable; try again soon") from exc
    if decision is not None and not decision.allowed:
        headers = decision.headers()
        raise RateLimited(f"{message}; retry in {headers['Retry-After']} s", headers=headers)
    return decision


async def enforce(request: Request, response: Response, policy: Policy, identifier: str) -> None:
    decision = await check(services_of(request).limiter, policy, identifier)
    if decision is not None:
        response.headers.update(decision.headers())


@functools.lru_cache(maxsize=256)
def _policy(name: str, text: str) -> Policy:
    return Policy.parse(name, text)


def _route_name(request: Request) -> str:
    """A name every process gives the same route: its methods and path template."""
    route: Any = request.scope.get("route")
    path = getattr(route, "path", None)
    if path is None:  # not matched through a router: the endpoint's dotted path
        endpoint: Any = request.scope.get("endpoint")
        return (
            f"route:{getattr(endpoint, '__module__', '')}.{getattr(endpoint, '__qualname__', '')}"
        )
    return f"route:{','.join(sorted(getattr(route, 'methods', None) or ()))}:{path}"


class RouteRateLimit:
    """A per-client limit on the routes that depend on it (build it with `rate_limit`).

    The rate is a text like "30/minute" or "5/10 seconds", given here or read from a setting
    (validated when the settings load). Its counters are shared by the routes that use one
    instance name (`name`), else kept per route. The limit fails open when the counter store
    is down, as the global limit does."""

    def __init__(self, rate: str | None, *, setting: str | None, name: str | None) -> None:
        if (rate is None) == (setting is None):
            raise ValueError("rate_limit needs a rate text or a setting name, not both")
        if rate is not None:
            _policy("check", rate)  # a bad literal fails at import, not at the first request
        self.rate = rate
        self.setting = setting
        self.name = name or setting

    def __repr__(self) -> str:
        return f"rate_limit({self.rate or 'setting=' + str(self.setting)})"

    async def __call__(self, request: Request, response: Response) -> None:
        services = services_of(request)
        text = self.rate if self.rate is not None else getattr(services.settings, str(self.setting))
        policy = _policy(self.name or _route_name(request), text)
        decision = await check(
            services.limiter, policy, client_of(request), message="Too many requests"
        )
        if decision is not None:
            response.headers.update(decision.headers())


def rate_limit(
    rate: str | None = None, *, setting: str | None = None, name: str | None = None
) -> RouteRateLimit:
    """`Depends(rate_limit("30/minute"))`, or `rate_limit(setting="rate_limit_search")` for
    a rate operators set (RATE_LIMIT_SEARCH)."""
    return RouteRateLimit(rate, setting=setting, name=name)
