"""Request ID and timing: a pure-ASGI middleware, outermost, so every response carries them."""

import re
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_SCOPE_KEY = "app.request_id"
_USER_KEY = "app.user_id"
# A client may pass its own ID for tracing, but only a sane one: it goes into logs and headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    """The request's ID; made on first use so that even errors outside the stack have one."""
    request_id = scope.get(_SCOPE_KEY)
    if request_id is None:
        request_id = scope[_SCOPE_KEY] = uuid.uuid4().hex
    return str(request_id)


def set_user_id(scope: MutableMapping[str, Any], user_id: int) -> None:
    """Remember who is calling, for the access log and the rate limiter."""
    scope[_USER_KEY] = user_id


def user_id_of(scope: MutableMapping[str, Any]) -> int | None:
    user_id = scope.get(_USER_KEY)
    return int(user_id) if user_id is not None else None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        if incoming is not None and _VALID_REQUEST_ID.match(incoming):
            scope[_SCOPE_KEY] = incoming
        request_id = request_id_of(scope)
        started = time.perf_counter()

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                headers["X-Process-Time"] = f"{(time.perf_counter() - started) * 1000:.2f}ms"
            await send(message)

        await self.app(scope, receive, send_with_context)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
