"""Per-route rate limits as dependencies (the global limit is a middleware)."""

from fastapi import Request, Response

from app.core.errors import AppError, ServiceUnavailable
from app.core.ratelimit import LimiterUnavailable, Policies, Policy, RateLimiter


class RateLimited(AppError):
    status, code = 429, "rate_limited"


def policies_of(request: Request) -> Policies:
    policies: Policies = request.app.state.rate_limit_policies
    return policies


async def enforce(request: Request, response: Response, policy: Policy, identifier: str) -> None:
    limiter: RateLimiter = request.app.state.limiter
    try:
        decision = await limiter.hit(policy, identifier)
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
