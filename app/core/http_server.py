"""`app api`'s HTTP/1.1 protocol: uvicorn's httptools protocol with the limits it lacks.

httptools (llhttp) has no limit on the request line or headers, and uvicorn arms no timer until
a first response: an attacker run held 48 MiB of headers (+300 MiB resident) and kept slow
connections open forever. This subclass, given to uvicorn as `http=` (it pickles as a string,
so `--workers N` keeps it), adds per connection:

- request line > HTTP_MAX_REQUEST_LINE_BYTES: 414; header bytes > HTTP_MAX_HEADER_BYTES or
  lines > HTTP_MAX_HEADERS: 431. Raw bytes are fed to the parser at most up to the head's
  budget, so httptools never buffers more than that whatever the client sends;
- a request head (or, on a fresh connection, its first byte) not complete within
  HTTP_HEADER_TIMEOUT_SECONDS: 408 (or a plain close if nothing came);
- a body slower than HTTP_BODY_MIN_RATE_BYTES per second over each HTTP_BODY_TIMEOUT_SECONDS
  window: 408. Windows in which the app, not the client, is behind don't count;
- more than HTTP_MAX_CONNECTIONS open connections in the process (WebSockets included): an idle
  keep-alive connection is closed to make room, else the request gets 503 with Retry-After.

Refusals are the error envelope (app.core.errors), written here because the app never sees the
request; `request_id` is fresh (no middleware ran) and also sent as X-Request-ID. The connection
is closed after each refusal. Everything else (keep-alive, WebSockets, pipelining, graceful
shutdown) is uvicorn's own code.
"""

import asyncio
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httptools
import structlog
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from app.core.config import Settings, get_settings
from app.core.errors import CODES_BY_STATUS, ErrorBody, ErrorResponse
from app.core.request_context import REQUEST_ID_HEADER, new_request_id

logger = structlog.stdlib.get_logger("app.http")

PROTOCOL = "app.core.http_server:LimitedHttpToolsProtocol"  # for uvicorn.run(http=...)
RETRY_AFTER_SECONDS = 2  # a full process is usually a burst; a proxy may pick another
# ": " and CRLF per header line, the blank line: raw bytes the counted header bytes omit.
_LINE_OVERHEAD = 4
_MAX_PATH_IN_ERROR = 200


@dataclass(frozen=True, slots=True)
class HttpLimits:
    request_line_bytes: int
    header_bytes: int
    headers: int
    header_timeout: float
    body_timeout: float
    body_min_rate: int
    connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "HttpLimits":
        return cls(
            request_line_bytes=settings.http_max_request_line_bytes,
            header_bytes=settings.http_max_header_bytes,
            headers=settings.http_max_headers,
            header_timeout=settings.http_header_timeout_seconds,
            body_timeout=settings.http_body_timeout_seconds,
            body_min_rate=settings.http_body_min_rate_bytes,
            connections=settings.http_max_connections,
        )

    @property
    def head_bytes(self) -> int:
        """Raw bytes a request head may take: line, headers, their separators."""
        return self.request_line_bytes + self.header_bytes + _LINE_OVERHEAD * (self.headers + 1)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the refusal is on the protocol."""


class _HeadWithBody:
    """A response's transport that holds its head until the first part of its body.

    uvicorn writes the status line and headers, then the body, in two writes: two send()
    calls and two TCP segments for every response. A head with a Content-Length is held and
    sent with the body's first part. A streamed (chunked) response, an empty body and a
    response to HEAD get their head at once, as before: an SSE client must see the headers
    before the first event. Everything else is the connection's own transport."""

    __slots__ = ("_cycle", "_head", "_head_seen", "_transport")

    def __init__(self, cycle: RequestResponseCycle, transport: asyncio.Transport) -> None:
        # Weak: the cycle holds this as its transport, and a reference cycle per request would
        # leave every request's objects to the garbage collector (measured: p99 x4).
        self._cycle = weakref.ref(cycle)
        self._transport = transport
        self._head = b""
        self._head_seen = False

    def write(self, data: bytes) -> None:
        if self._head:
            data, self._head = self._head + data, b""
        elif not self._head_seen and (cycle := self._cycle()) and cycle.response_started:
            self._head_seen = True  # the head (a 100 Continue may have gone before it)
            if (
                cycle.chunked_encoding is False
                and cycle.expected_content_length > 0
                and cycle.scope["method"] != "HEAD"
            ):
                self._head = data
                return
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = HttpLimits.from_settings(get_settings())
        self._refused = False
        self._refusal: tuple[int, str, dict[str, str]] | None = None
        self._over_capacity = False
        self._in_head = True
        self._head_started = False  # a byte of the current request head has come
        self._head_room = self.limits.head_bytes
        self._url_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._has_body = False
        self._body_bytes = 0
        self._window_start_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.connections and not self._close_an_idle_one():
            self._over_capacity = True  # answered 503 once its request head is in
        # A connection that sends nothing must not be held either.
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def _close_an_idle_one(self) -> bool:
        """Make room by closing an idle keep-alive connection (as nginx does when full)."""
        for other in self.connections:
            if (
                isinstance(other, LimitedHttpToolsProtocol)
                and other is not self
                and other.timeout_keep_alive_task is not None
                and not other.pipeline
                and not other.transport.is_closing()
            ):
                other.transport.close()
                # Out of the count now: its connection_lost comes a loop turn later.
                self.connections.discard(other)
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            if not self._in_head or len(data) <= self._head_room:
                if self._in_head:
                    self._head_room -= len(data)
                self.parser.feed_data(data)
            else:
                self._feed_within_head_budget(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                status, message, headers = self._refusal
                self._refuse(status, message, headers)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")

    def _feed_within_head_budget(self, data: bytes) -> None:
        """Feed no more than the head may still take; refuse if the head goes on past it."""
        view = memoryview(data)
        while view:
            if not self._in_head:
                self.parser.feed_data(view)
                return
            if self._head_room <= 0:
                if self._header_count == 0:
                    self._refusal = (414, "The request line is too long", {})
                else:
                    self._refusal = (431, "The request headers are too large", {})
                raise httptools.HttpParserError("request head over its budget")
            chunk, view = view[: self._head_room], view[self._head_room :]
            self._head_room -= len(chunk)
            self.parser.feed_data(chunk)

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._url_bytes = self._header_bytes = self._header_count = 0
        self._has_body = False
        if self._head_timer is None:  # a fresh connection's timer runs already
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.request_line_bytes:
            self._stop(414, "The request line is too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > self.limits.headers:
            self._stop(431, f"More than {self.limits.headers} request headers")
        if self._header_bytes > self.limits.header_bytes:
            self._stop(431, "The request headers are too large")
        lowered = name.lower()
        if lowered == b"transfer-encoding" or (lowered == b"content-length" and value != b"0"):
            self._has_body = True
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._over_capacity:
            self._stop(
                503,
                "The server is at its connection limit; retry shortly",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        super().on_headers_complete()
        if self._has_body and not (self.parser.should_upgrade() and self._should_upgrade()):
            self._body_bytes = self._window_start_bytes = 0
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout, self._body_window_over
            )

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        cycle.transport = _HeadWithBody(cycle, self.transport)  # type: ignore[assignment]
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._in_head = True
        self._head_started = False
        self._head_room = self.limits.head_bytes
        super().on_message_complete()

    def _stop(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._refusal = (status, message, headers or {})
        raise _Refused(message)

    # --- timers ------------------------------------------------------------------------------

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if not self._head_started:
            # Nothing came: no request to answer (a fresh or a keep-alive connection).
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, "The request head did not arrive in time")

    def _body_window_over(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing():
            return
        cycle = self.cycle
        app_is_behind = self.flow.read_paused or (
            cycle is not None and not cycle.response_complete and len(cycle.body) > 0
        )
        progress = self._body_bytes - self._window_start_bytes
        if app_is_behind or progress >= self.limits.body_min_rate * self.limits.body_timeout:
            self._window_start_bytes = self._body_bytes
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout, self._body_window_over
            )
            return
        self._refuse(408, "The request body arrived too slowly", during_body=True)

    # --- refusals ----------------------------------------------------------------------------

    def _refuse(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        during_body: bool = False,
    ) -> None:
        """Answer in the envelope, then close. Not over an answer already on the wire: the
        request's own (a body refusal) or a pipelined earlier one's (a head refusal)."""
        self._refused = True
        self._cancel_timers()
        cycle = self.cycle  # the refused request's own only once its head was complete
        logger.warning(
            "request refused by the HTTP server",
            status=status,
            reason=message,
            client=f"{self.client[0]}:{self.client[1]}" if self.client else None,
        )
        if during_body:
            may_write = cycle is not None and not cycle.response_started
        else:
            may_write = cycle is None or cycle.response_complete
        if may_write:
            self.transport.write(self._error_response(status, message, headers or {}))
        if cycle is not None and not cycle.response_complete:
            # The app's task (if any) sees a disconnect and its writes go nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _error_response(self, status: int, message: str, headers: dict[str, str]) -> bytes:
        request_id = new_request_id()
        body = ErrorResponse(
            error=ErrorBody(
                status=status,
                code=CODES_BY_STATUS.get(status, "error"),
                message=message,
                details=[],
                request_id=request_id,
                timestamp=datetime.now(UTC),
                path=self._path_for_error(status),
            )
        ).model_dump_json()
        encoded = body.encode()
        head = [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(encoded),
            b"connection: close\r\n",
            REQUEST_ID_HEADER.lower().encode() + b": " + request_id.encode() + b"\r\n",
        ]
        for name, value in headers.items():
            head.append(f"{name.lower()}: {value}\r\n".encode("latin-1"))
        for raw_name, raw_value in self.server_state.default_headers:
            head.append(raw_name + b": " + raw_value + b"\r\n")
        return b"".join([*head, b"\r\n", encoded])

    def _path_for_error(self, status: int) -> str:
        if status == 414 or not self._url_bytes:
            return ""
        try:
            path = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return ""
        return (path or b"").decode("latin-1")[:_MAX_PATH_IN_ERROR]
