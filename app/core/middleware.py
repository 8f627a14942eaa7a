"""Pure-ASGI middleware. Each passes through scope types it doesn't handle, and answers its
own refusals in the error envelope."""

import re
import time
from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.dependencies import services_in
from app.core.errors import CODES_BY_STATUS, error_response
from app.core.metrics import IN_FLIGHT, LATENCY, REQUESTS
from app.core.proxy import parse_host
from app.core.ratelimit import Policy
from app.core.request_context import QUIET_PATHS, client_ip_of, route_of

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie"})
# Probes and scrapes are not client traffic: never rate limited.
UNLIMITED_PREFIXES = ("/health", "/metrics", "/static/")


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> None:
    response = error_response(
        Request(scope),
        status=status,
        code=CODES_BY_STATUS.get(status, "error"),
        message=message,
        headers=headers,
    )
    await response(scope, receive, send)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        headers = dict(SECURITY_HEADERS)
        if hsts:  # only behind TLS: a browser would refuse plain HTTP for a year after
            headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        self.raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        # An answer to a request that carries credentials depends on who asked: no browser or
        # proxy may keep it (a shared computer's disk cache, a corporate proxy). Anonymous
        # answers stay cacheable. A route that sets its own Cache-Control keeps it.
        personal = any(name in _CREDENTIAL_HEADERS for name, _ in scope["headers"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name for name, _ in headers}  # a route may set its own
                headers += [pair for pair in self.raw if pair[0] not in present]
                if (personal or b"set-cookie" in present) and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class MetricsMiddleware:
    """Request counts, latencies and in-flight requests by route template. Probes and scrapes
    are left out: they are not traffic, and they would dominate the series."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            IN_FLIGHT.dec()
            route, method = route_of(scope), scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - started)


class GZipIfAcceptedMiddleware(GZipMiddleware):
    """GZip only for clients that accept it; everyone else goes straight through, at no cost.

    An uncompressed answer without `Vary` is valid for every client, so skipping the wrapper
    can't make a shared cache serve the wrong encoding.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"accept-encoding" and b"gzip" in value:
                    await super().__call__(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class RateLimitMiddleware:
    """The global limit per client address; tighter per-route limits are dependencies."""

    def __init__(self, app: ASGIApp, *, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        decision = await services_in(scope).limiter.hit(self.policy, client_ip_of(scope))
        if decision is None:  # the store is down and this limit fails open
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            await send_error(
                scope, receive, send, status=429, headers=decision.headers(),
                message=f"Too many requests; retry in {decision.headers()['Retry-After']} s",
            )  # fmt: skip
            return
        limit_headers = decision.headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in limit_headers.items():
                    headers.setdefault(name, value)  # a tighter route limit may have set them
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TrustedHostMiddleware:
    """Refuses requests for hosts we don't serve (Host header attacks, DNS rebinding).

    Health probes pass whatever the Host: orchestrators and image healthchecks call the pod IP or
    127.0.0.1:8000, and they answer nothing a forged Host could abuse. IPv6 literals match with
    or without brackets (`::1` and `[::1]` both allow `Host: [::1]:8000`)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allow_any = "*" in allowed_hosts
        hosts = [h.lower().removeprefix("[").removesuffix("]") for h in allowed_hosts]
        self.exact = {h for h in hosts if not h.startswith("*.")}
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.allow_any
            or scope["type"] not in ("http", "websocket")
            or scope["path"] == "/health"
            or scope["path"].startswith("/health/")
        ):
            await self.app(scope, receive, send)
            return
        parsed = parse_host(Headers(scope=scope).get("host", ""))
        host = parsed.host if parsed is not None else None
        if host is not None and (
            host in self.exact or (self.suffixes and host.endswith(self.suffixes))
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_error(scope, receive, send, status=400, message="Invalid host header")


class BodySizeLimitMiddleware:
    """Caps request bodies while they arrive: a declared length over the cap is refused before
    reading, and a chunked body is cut off the moment it passes the cap.

    `path_limits` gives some paths (uploads) their own cap instead of the global one: the cap is
    decided here, before routing, so it goes by path; the handler then checks the finer rule
    (the file's own size) while it reads."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, path_limits: Sequence[tuple[str, int]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = [(re.compile(pattern), limit) for pattern, limit in path_limits]

    def _limit_for(self, path: str) -> int:
        for pattern, limit in self.path_limits:
            if pattern.match(path):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self._limit_for(scope["path"])
        message_text = f"Request body is larger than {max_bytes} bytes"
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await send_error(scope, receive, send, status=413, message=message_text)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # FastAPI passes HTTPExceptions from body reading through untouched.
                    raise HTTPException(status_code=413, detail=message_text)
            return message

        await self.app(scope, limited_receive, send)
