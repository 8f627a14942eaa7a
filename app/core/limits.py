"""Per-route rate limits as dependencies (the global limit is a middleware)."""

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
