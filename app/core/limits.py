"""Per-route rate limits as dependencies (the global limit is a middleware)."""

from fastapi import Request, Response

from app.core.dependencies import services_of
from app.core.errors import AppError, ServiceUnavailable
from app.core.ratelimit import LimiterUnavailable, Policy


class RateLimited(AppError):
    status, code = 429, "rate_limited"


async def enforce(request: Request, response: Response, policy: Policy, identifier: str) -> None:
    try:
        decision = await services_of(request).limiter.hit(policy, identifier)
    except LimiterUnavailable as exc:
        raise ServiceUnavailable("This operation is briefly unavailable; try again soon") from exc
    if decision is None:
        return
    if not decision.allowed:
        raise RateLimited(
            f"Too many attempts; retry in {decision.headers()['Retry-After']} s",
            headers=decision.headers(),
        )
    response.headers.update(decision.headers())
