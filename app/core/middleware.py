"""The app's own pure-ASGI middleware: two layers (the edge of every request, and the body
limits), each one function call and one wrapper per request where the work allows. Each passes
through scope types it doesn't handle, and answers its own refusals in the error envelope."""

import json
import re
import time
from base64 import b64encode
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.sessions import Session, SessionMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.dependencies import services_in
from app.core.errors import CODES_BY_STATUS, error_response
from app.core.limit_keys import client_key
from app.core.logging import AccessLog
from app.core.metrics import IN_FLIGHT, LATENCY, REQUESTS
from app.core.proxy import parse_host
from app.core.ratelimit import Policy
from app.core.request_context import (
    QUIET_PATHS,
    REQUEST_ID,
    REQUEST_ID_KEY,
    USER_ID,
    USER_KEY,
    VALID_REQUEST_ID,
    client_ip_of,
    request_id_of,
    route_of,
)

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


class EdgeMiddleware:
    """Everything every request passes through, as one layer: per request one scan of the
    headers and one wrapper of `send`, where seven layers each made their own. In the order the
    layers ran (outermost first), which decides what each answer carries:

    1. request context: the request ID (the client's, if sane, else a new one) in the log
       context and in `X-Request-ID`, `X-Process-Time`, and the access log line (HTTP and
       WebSocket);
    2. metrics: counts, latencies and in-flight requests by route template (not probes);
    3. the global rate limit per client (`policy`; None: off): its 429 carries only what the
       two above add; answers below get its `X-RateLimit-*` headers unless a route set them;
    4. security headers, and `Cache-Control: no-store` on answers to credentials;
    5. gzip, for clients that accept it (everyone else pays nothing);
    6. trusted hosts: a duplicate or unknown `Host` is refused (400, or a WebSocket closed with
       1008); health probes pass whatever their Host. This check ran inside gzip: its refusals
       are far under gzip's minimum size, which gzip passes untouched, so they are unchanged.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: list[str],
        policy: Policy | None = None,
        ipv6_prefix: int = 64,
        hsts: bool = False,
        access_log: bool = True,
        gzip_minimum_size: int = 1000,
    ) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=gzip_minimum_size)
        self.access_log = access_log
        self.logger = AccessLog("app.access")
        self.policy = policy
        self.ipv6_prefix = ipv6_prefix
        headers = dict(SECURITY_HEADERS)
        if hsts:  # only behind TLS: a browser would refuse plain HTTP for a year after
            headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        self.security = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]
        self.allow_any = "*" in allowed_hosts
        hosts = [h.lower().removeprefix("[").removesuffix("]") for h in allowed_hosts]
        self.exact = {h for h in hosts if not h.startswith("*.")}
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))

    def _host_problem(self, path: str, host_count: int, host: str) -> str | None:
        """Why this Host is refused, or None. IPv6 literals match with or without brackets."""
        if host_count > 1:  # a proxy and the app may each believe a different one
            return "Duplicate Host header"
        if self.allow_any or path == "/health" or path.startswith("/health/"):
            return None
        parsed = parse_host(host)
        name = parsed.host if parsed is not None else None
        if name is not None and (
            name in self.exact or (self.suffixes and name.endswith(self.suffixes))
        ):
            return None
        return "Invalid host header"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming, personal, accepts_gzip, host_count, host = _scan_headers(scope["headers"])
        request_id = _adopt_request_id(scope, incoming)
        request_token = REQUEST_ID.set(request_id)
        user_token = USER_ID.set(None)
        started = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering
        request_id_bytes = request_id.encode("latin-1")
        limit_headers: list[tuple[bytes, bytes]] = []

        async def send_outer(message: Message) -> None:  # what the 429 passes: 1 and 2
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed = f"{(time.perf_counter() - started) * 1000:.2f}ms".encode()
                # Raw header pairs: parsing them into a Headers object costs more than this.
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"x-request-id"]
                headers += [(b"x-request-id", request_id_bytes), (b"x-process-time", elapsed)]
                message["headers"] = headers
            await send(message)

        async def send_inner(message: Message) -> None:  # what the rest passes: 4, 3, 2, 1
            if message["type"] == "http.response.start":
                message["headers"] = self._added_headers(
                    message.get("headers", ()), personal=personal, limits=limit_headers
                )
            await send_outer(message)

        path = scope["path"]
        metered = path not in QUIET_PATHS  # probes and scrapes are not traffic
        try:
            if metered:
                IN_FLIGHT.inc()
            try:
                if self.policy is not None and not path.startswith(UNLIMITED_PREFIXES):
                    limited = await self._rate_limit(scope, receive, send_outer, self.policy)
                    if limited is None:
                        return
                    limit_headers = limited
                problem = self._host_problem(path, host_count, host.decode("latin-1"))
                if problem is not None:
                    await send_error(scope, receive, send_inner, status=400, message=problem)
                elif accepts_gzip:
                    await self.gzip(scope, receive, send_inner)
                else:
                    await self.app(scope, receive, send_inner)
            finally:
                if metered:
                    _count(scope, status, started)
        finally:
            if self.access_log and (status >= 400 or path not in QUIET_PATHS):
                self._log_request(scope, status, started)
            REQUEST_ID.reset(request_token)
            USER_ID.reset(user_token)

    def _added_headers(
        self,
        raw: Iterable[tuple[bytes, bytes]],
        *,
        personal: bool,
        limits: list[tuple[bytes, bytes]],
    ) -> list[tuple[bytes, bytes]]:
        headers = list(raw)
        present = {name for name, _ in headers}  # a route may set its own
        headers += [pair for pair in self.security if pair[0] not in present]
        # An answer to a request that carries credentials depends on who asked: no browser or
        # proxy may keep it (a shared computer's disk cache, a corporate proxy). Anonymous
        # answers stay cacheable. A route that sets its own Cache-Control keeps it.
        if (personal or b"set-cookie" in present) and b"cache-control" not in present:
            headers.append((b"cache-control", b"no-store"))
        headers += [pair for pair in limits if pair[0] not in present]  # a route's own limit
        return headers

    async def _rate_limit(
        self, scope: Scope, receive: Receive, send: Send, policy: Policy
    ) -> list[tuple[bytes, bytes]] | None:
        """The global limit's headers for the answer, or None once it has answered 429."""
        client = client_key(client_ip_of(scope), ipv6_prefix=self.ipv6_prefix)
        decision = await services_in(scope).limiter.hit(policy, client)
        if decision is None:  # the store is down and this limit fails open
            return []
        if not decision.allowed:
            await send_error(
                scope, receive, send, status=429, headers=decision.headers(),
                message=f"Too many requests; retry in {decision.headers()['Retry-After']} s",
            )  # fmt: skip
            return None
        return [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in decision.headers().items()
        ]

    def _log_request(self, scope: Scope, status: int, started: float) -> None:
        # Path template, not the raw path: no IDs or query strings (tokens) in logs.
        self.logger.info({
            "method": scope["method"],
            "route": route_of(scope),
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "client": client_ip_of(scope),
            "user_id": scope.get(USER_KEY),
            "event": "request",
        })  # fmt: skip

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming, _, _, host_count, host = _scan_headers(scope["headers"])
        request_token = REQUEST_ID.set(_adopt_request_id(scope, incoming))
        user_token = USER_ID.set(None)
        started = time.perf_counter()
        status = 500
        close_code: int | None = None

        async def send_with_context(message: Message) -> None:
            nonlocal status, close_code
            if message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close":
                close_code = message.get("code", 1000)
                if status != 101:  # refused before the handshake: the client got a 403
                    status = 403
            await send(message)

        try:
            if self._host_problem(scope["path"], host_count, host.decode("latin-1")):
                await send_with_context({"type": "websocket.close", "code": 1008})
            else:
                await self.app(scope, receive, send_with_context)
        finally:
            if self.access_log:
                # Once the socket ends: how long it lived and how it closed (client gone: None).
                self.logger.info({
                    "route": route_of(scope),
                    "status": status,
                    "close_code": close_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client_ip_of(scope),
                    "user_id": scope.get(USER_KEY),
                    "event": "websocket",
                })  # fmt: skip
            REQUEST_ID.reset(request_token)
            USER_ID.reset(user_token)


def _count(scope: Scope, status: int, started: float) -> None:
    IN_FLIGHT.dec()
    route, method = route_of(scope), scope["method"]
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(time.perf_counter() - started)


def _scan_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[bytes | None, bool, bool, int, bytes]:
    """One pass for the edge: the client's request ID (the first), whether credentials came,
    whether gzip is accepted (any Accept-Encoding naming it), how many Host headers, the first."""
    incoming: bytes | None = None
    personal = accepts_gzip = False
    host_count, host = 0, b""
    for name, value in headers:
        if name == b"x-request-id":
            incoming = value if incoming is None else incoming
        elif name in _CREDENTIAL_HEADERS:
            personal = True
        elif name == b"host":
            host_count += 1
            host = value if host_count == 1 else host
        elif name == b"accept-encoding" and b"gzip" in value:
            accepts_gzip = True
    return incoming, personal, accepts_gzip, host_count, host


def _adopt_request_id(scope: Scope, incoming: bytes | None) -> str:
    # A client may pass its own ID for tracing, but only a sane one: it goes into logs and
    # headers.
    if incoming is not None and VALID_REQUEST_ID.match(incoming.decode("latin-1")):
        scope[REQUEST_ID_KEY] = incoming.decode("latin-1")
    return request_id_of(scope)


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


class SignedSessionMiddleware(SessionMiddleware):
    """Starlette's signed session cookie (OPS-4), free for the requests that carry no cookie.

    Starlette's layer parses the cookies of every request and builds a headers object for
    every answer. Most API calls send a bearer token and no cookie at all; they now get their
    empty session without that work, and their answer is only touched when a route used the
    session: then it carries `Vary: Cookie`, and the new cookie if the route stored something,
    as Starlette writes them (with no cookie in, there is no old session to clear). Requests
    with a cookie, and WebSockets, take Starlette's own path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(name == b"cookie" for name, _ in scope["headers"]):
            await super().__call__(scope, receive, send)
            return
        session = scope["session"] = Session()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and session.accessed:
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers.add_vary_header("Cookie")
                if session.modified and session:
                    signed = self.signer.sign(b64encode(json.dumps(session).encode()))
                    max_age = f"Max-Age={self.max_age}; " if self.max_age is not None else ""
                    headers.append(
                        "Set-Cookie",
                        f"{self.session_cookie}={signed.decode()}; path={self.path}; "
                        f"{max_age}{self.security_flags}",
                    )
            await send(message)

        await self.app(scope, receive, send_wrapper)


class BodyLimitsMiddleware:
    """Caps request bodies while they arrive, then refuses JSON bodies of the wrong shape: two
    layers' work in one, in their order.

    The size cap: a declared length over the cap is refused before reading, and a chunked body
    is cut off the moment it passes the cap. `path_limits` gives some paths (uploads) their own
    cap instead of the global one: the cap is decided here, before routing, so it goes by path;
    the handler then checks the finer rule (the file's own size) while it reads.

    The shape: JSON bodies nested deeper than `max_depth` or with more than `max_items` values
    are refused (413) before FastAPI parses them and pydantic validates them: pydantic would
    make one error per unknown key (500 000 keys kept a process busy ~10 s). The body is read
    whole through the cap, as FastAPI does for a JSON body anyway, then handed on unchanged.
    Paths matching `json_skip_paths` (streamed uploads) are not read here."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        path_limits: Sequence[tuple[str, int]] = (),
        json_max_depth: int,
        json_max_items: int,
        json_skip_paths: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = [(re.compile(pattern), limit) for pattern, limit in path_limits]
        self.max_depth = json_max_depth
        self.max_items = json_max_items
        # One alternation: a single match call per request, not one per pattern.
        self.skip = (
            re.compile("|".join(f"(?:{p})" for p in json_skip_paths)) if json_skip_paths else None
        )

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

        if not _json_body_expected(scope["headers"]) or (
            self.skip is not None and self.skip.match(scope["path"])
        ):
            await self.app(scope, limited_receive, send)
            return
        chunks = []
        try:
            while True:
                message = await limited_receive()
                if message["type"] != "http.request":
                    return  # the client left: nobody to answer
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except HTTPException as exc:  # the body cap
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
                return await limited_receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
