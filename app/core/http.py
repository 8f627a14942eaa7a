"""The outbound HTTP client: timeouts and limits. An API process opens one in its lifespan
(`Services.http`, `HttpClientDep`); the worker runtime opens one on first use.

A slow or dead upstream ends in a 504 or 502 in the envelope, never a hung request."""

from typing import Any

import httpx

from app.core.errors import AppError

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30)


class UpstreamTimeout(AppError):
    status, code = 504, "gateway_timeout"


class UpstreamUnavailable(AppError):
    status, code = 502, "bad_gateway"


def create_http_client(timeout: httpx.Timeout = TIMEOUT) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout, limits=LIMITS, follow_redirects=False, headers={"User-Agent": "app/1.0"}
    )


async def fetch(
    client: httpx.AsyncClient, method: str, url: str, *, upstream: str, **kwargs: Any
) -> httpx.Response:
    """One upstream call; timeouts become 504 and connection failures 502 (named, not leaked)."""
    try:
        return await client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"{upstream} did not answer in time") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(f"{upstream} is unreachable") from exc
