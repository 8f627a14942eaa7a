"""The request context, outside every middleware but the forwarded headers: request ID, timing,
log context, access log. The client address is scope["client"], already taken from a trusted
proxy's headers (app.core.proxy)."""

import logging
import re
import time
import uuid
from collections.abc import MutableMapping, Sequence
from contextvars import ContextVar
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.types import Processor

REQUEST_ID_HEADER = "X-Request-ID"
_SCOPE_KEY = "app.request_id"
_USER_KEY = "app.user_id"
# A client may pass its own ID for tracing, but only a sane one: it goes into logs and headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Load balancer probes would drown the access log; their failures are still logged.
QUIET_PATHS = frozenset({"/health", "/health/ready", "/metrics"})

# What every log line of a request carries; read by a logging processor (app.core.logging).
# Two plain context variables cost less per request than structlog's bind/clear.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
USER_ID: ContextVar[int | None] = ContextVar("user_id", default=None)


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    """The request's ID; made on first use so that even errors outside the stack have one."""
    request_id = scope.get(_SCOPE_KEY)
    if request_id is None:
        request_id = scope[_SCOPE_KEY] = uuid.uuid4().hex
    return str(request_id)


def set_user_id(scope: MutableMapping[str, Any], user_id: int) -> None:
    """Remember who is calling, for the access log and the log context."""
    scope[_USER_KEY] = user_id
    USER_ID.set(user_id)


def client_ip_of(scope: MutableMapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def route_of(scope: Scope) -> str:
    """The matched route's full template (`/api/v1/items/{item_id}`): bounded cardinality.

    FastAPI keeps the full template of a route inside included routers in its own scope entry
    (`route.path` is only the innermost router's part); tests pin this down across upgrades.
    """
    context = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None) or getattr(scope.get("route"), "path", None)
    return str(template or "<unmatched>")


class AccessLog:
    """Writes what `structlog.stdlib.get_logger(name).info(event, **fields)` would, for less.

    Under the setup of app.core.logging (structlog into the standard library's handlers) it
    runs the configured processors itself and hands one record to the handlers: no bound
    logger to resolve, no context copy, no search for the caller's frame (no formatter here
    prints it), and with the level above INFO no work at all. Any other structlog setup gets
    the ordinary call. Like a structlog logger cached on first use, it reads the setup once,
    at its first line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stdlib = logging.getLogger(name)
        self.chain: Sequence[Processor] | None = None  # None: not resolved yet
        self.direct = False

    def _resolve(self) -> Sequence[Processor]:
        config = structlog.get_config()
        processors: list[Processor] = list(config["processors"])
        self.direct = (
            isinstance(config["logger_factory"], structlog.stdlib.LoggerFactory)
            and bool(processors)
            and processors[-1] is structlog.stdlib.ProcessorFormatter.wrap_for_formatter
        )
        self.chain = processors[:-1]
        return self.chain

    def info(self, fields: dict[str, Any]) -> None:
        """`fields` in the order structlog would make them: the keywords, then "event"."""
        chain = self.chain if self.chain is not None else self._resolve()
        if not self.direct:
            event = fields.pop("event")
            structlog.stdlib.get_logger(self.name).info(event, **fields)
            return
        logger = self.stdlib
        if not logger.isEnabledFor(logging.INFO):  # cached by the standard library
            return
        event_dict: Any = fields
        for processor in chain:
            event_dict = processor(logger, "info", event_dict)
        record = logger.makeRecord(
            self.name, logging.INFO, "(unknown file)", 0, event_dict, (), None,
            extra={"_logger": logger, "_name": "info"},
        )  # fmt: skip
        logger.handle(record)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self.logger = AccessLog("app.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        if incoming is not None and _VALID_REQUEST_ID.match(incoming):
            scope[_SCOPE_KEY] = incoming
        request_id = request_id_of(scope)
        request_token = REQUEST_ID.set(request_id)
        user_token = USER_ID.set(None)
        started = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering
        request_id_bytes = request_id.encode("latin-1")

        close_code: int | None = None

        async def send_with_context(message: Message) -> None:
            nonlocal status, close_code
            if message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close":
                close_code = message.get("code", 1000)
                if status != 101:  # refused before the handshake: the client got a 403
                    status = 403
            elif message["type"] == "http.response.start":
                status = message["status"]
                elapsed = f"{(time.perf_counter() - started) * 1000:.2f}ms".encode()
                # Raw header pairs: parsing them into a Headers object costs more than this.
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"x-request-id"]
                headers += [(b"x-request-id", request_id_bytes), (b"x-process-time", elapsed)]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        finally:
            quiet = not self.access_log or (status < 400 and scope["path"] in QUIET_PATHS)
            if scope["type"] == "http" and not quiet:
                # Path template, not the raw path: no IDs or query strings (tokens) in logs.
                self.logger.info({
                    "method": scope["method"],
                    "route": route_of(scope),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client_ip_of(scope),
                    "user_id": scope.get(_USER_KEY),
                    "event": "request",
                })  # fmt: skip
            elif scope["type"] == "websocket" and self.access_log:
                # Once the socket ends: how long it lived and how it closed (client gone: None).
                self.logger.info({
                    "route": route_of(scope),
                    "status": status,
                    "close_code": close_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client_ip_of(scope),
                    "user_id": scope.get(_USER_KEY),
                    "event": "websocket",
                })  # fmt: skip
            REQUEST_ID.reset(request_token)
            USER_ID.reset(user_token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
