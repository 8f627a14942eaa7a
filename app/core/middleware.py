"""Pure-ASGI middleware. Each passes through scope types it doesn't handle, and answers its
own refusals in the error envelope."""

import json
import re
import time
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.dependencies import services_in
from app.core.errors import CODES_BY_STATUS, error_response
from app.core.limit_keys import client_key
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
    """The global limit per client (app.core.limit_keys.client_key: an IPv4 address, an IPv6
    network); tighter per-route limits are dependencies."""

    def __init__(self, app: ASGIApp, *, policy: Policy, ipv6_prefix: int = 64) -> None:
        self.app = app
        self.policy = policy
        self.ipv6_prefix = ipv6_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        client = client_key(client_ip_of(scope), ipv6_prefix=self.ipv6_prefix)
        decision = await services_in(scope).limiter.hit(self.policy, client)
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


def _host_count(scope: Scope) -> int:
    return sum(1 for name, _ in scope["headers"] if name == b"host")


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
        if scope["type"] in ("http", "websocket") and _host_count(scope) > 1:
            # Two Host headers: a proxy and the app may each believe a different one.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send_error(scope, receive, send, status=400, message="Duplicate Host header")
            return
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


# A JSON string, escapes included (unrolled, so matching is linear), and what a structural scan
# keeps of a body: brackets only, each worth +1 (opening) or -1 (closing) of depth.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
for _opening, _closing in (b"[]", b"{}"):
    _DEPTH_STEP[_opening], _DEPTH_STEP[_closing] = 1, -1
_CONTAINERS = (dict, list)
_HEADS = (64 * 1024, 512 * 1024)  # a flood of values shows in the first of these


def _too_deep(max_depth: int) -> str:
    return f"The JSON body is nested deeper than {max_depth} levels"


def _too_many(max_items: int) -> str:
    return f"The JSON body has more than {max_items} values"


def _head_problem(head: bytes, *, max_depth: int, max_items: int) -> str | None:
    """What is over a limit in the body's first bytes is over in the body: strings blanked
    out (up to one the cut split), the commas, containers and running depth of what is left."""
    structure = _JSON_STRING.sub(b"0", head)
    unterminated = structure.find(b'"')
    if unterminated >= 0:
        structure = structure[:unterminated]
    brackets = structure.translate(None, _NOT_BRACKETS)
    if structure.count(b",") > max_items:
        return _too_many(max_items)
    if brackets and max(accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > max_depth:
        return _too_deep(max_depth)
    return None


def json_shape_problem(body: bytes, *, max_depth: int, max_items: int) -> str | None:
    """Why this JSON body is nested deeper than `max_depth` or has more than `max_items`
    values (object members plus array elements), or None. Malformed JSON is left to FastAPI
    (a 422).

    Bracket and comma counts bound both from above at C speed: a normal body stops there
    (~1 us). A flood (500 000 keys) is caught in the body's first 512 KiB without parsing it.
    Only what is left is parsed (C) and its containers walked."""
    opens = body.count(b"[") + body.count(b"{")
    if opens <= max_depth and opens + body.count(b",") <= max_items:
        return None
    for size in _HEADS:
        if len(body) > size:
            problem = _head_problem(body[:size], max_depth=max_depth, max_items=max_items)
            if problem is not None:
                return problem
    try:
        value = json.loads(body)
    except RecursionError:
        return _too_deep(max_depth)
    except ValueError:
        return None
    return _walk_problem(value, max_depth=max_depth, max_items=max_items)


def _walk_problem(value: object, *, max_depth: int, max_items: int) -> str | None:
    items = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = []
    if isinstance(value, _CONTAINERS):
        stack.append((value, 1))
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return _too_deep(max_depth)
        items += len(node)
        if items > max_items:
            return _too_many(max_items)
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return None


def _json_body_expected(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Will FastAPI parse this request's body as JSON? (It does without a Content-Type too.)"""
    has_body, is_json = False, True
    for name, value in headers:
        if name == b"content-length":
            has_body = value != b"0"
        elif name == b"transfer-encoding":
            has_body = True
        elif name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            is_json = media_type == b"application/json" or media_type.endswith(b"+json")
    return has_body and is_json


class JSONLimitsMiddleware:
    """Refuses (413) JSON bodies nested deeper than `max_depth` or with more than `max_items`
    values, before FastAPI parses them and pydantic validates them: pydantic would make one
    error per unknown key (500 000 keys kept a process busy ~10 s). Works under any server.

    It sits inside BodySizeLimitMiddleware (the body it reads is capped) and reads the whole
    body, as FastAPI does for a JSON body anyway, then hands it on unchanged. Paths in
    `skip_paths` (streamed uploads) are passed through."""

    def __init__(
        self, app: ASGIApp, *, max_depth: int, max_items: int, skip_paths: Sequence[str] = ()
    ) -> None:
        self.app = app
        self.max_depth = max_depth
        self.max_items = max_items
        # One alternation: a single match call per request, not one per pattern.
        self.skip = re.compile("|".join(f"(?:{p})" for p in skip_paths)) if skip_paths else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not _json_body_expected(scope["headers"])
            or (self.skip is not None and self.skip.match(scope["path"]))
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left: nobody to answer
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except HTTPException as exc:  # the body cap, raised by the receive we wrap
            await send_error(scope, receive, send, status=exc.status_code, message=exc.detail)
            return
        body = b"".join(chunks)
        problem = json_shape_problem(body, max_depth=self.max_depth, max_items=self.max_items)
        if problem is not None:
            await send_error(scope, receive, send, status=413, message=problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
