"""The error family and the one place that turns any error into the envelope."""

import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.routing import compile_path
from starlette.websockets import WebSocket, WebSocketState

from app.core.request_context import REQUEST_ID_HEADER, request_id_of

CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    416: "range_not_satisfiable",
    429: "rate_limited",
    431: "request_header_fields_too_large",
    500: "internal_error",
    503: "service_unavailable",
    507: "insufficient_storage",
    504: "gateway_timeout",
}


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str
    type: str


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    details: list[ErrorDetail]
    request_id: str
    timestamp: datetime
    path: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class AppError(Exception):
    """A domain error: services raise these; only this module knows they become HTTP."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}


class Unauthorized(AppError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "Not authenticated") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status, code = 403, "forbidden"


class NotFound(AppError):
    status, code = 404, "not_found"


class Conflict(AppError):
    status, code = 409, "conflict"


class ServiceUnavailable(AppError):
    status, code = 503, "service_unavailable"


class NoResource(NotFound):
    """A path a route refuses as if it had no route: the same 404 as an unknown URL."""

    def __init__(self, path: str) -> None:
        super().__init__(f"No resource at {path}")


class InvalidCursor(AppError):
    """A keyset cursor (app.core.pagination) we did not issue, reported like a bad query."""

    status, code = 422, "validation_error"

    def __init__(self) -> None:
        detail = ErrorDetail(field="query.cursor", message="not a cursor we issued", type="cursor")
        super().__init__("Invalid request: query.cursor is not valid", details=[detail])


class OverSetting(AppError):
    """A value the schema allows but this server's setting does not; reported like any other
    invalid field (the document can't know the operator's setting)."""

    status, code = 422, "validation_error"

    def __init__(self, field: str, limit: int, setting: str) -> None:
        message = f"over this server's limit of {limit} ({setting})"
        detail = ErrorDetail(field=field, message=message, type="over_setting")
        super().__init__(f"Invalid request: {field} is {message}", details=[detail])


def error_response(
    request: HTTPConnection,  # a WebSocket too: a refused handshake answers in the envelope
    *,
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    request_id = request_id_of(request.scope)
    body = ErrorResponse(
        error=ErrorBody(
            status=status,
            code=code,
            message=message,
            details=details or [],
            request_id=request_id,
            timestamp=datetime.now(UTC),
            path=request.url.path,
        )
    )
    all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=all_headers)


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(
        request,
        status=exc.status,
        code=exc.code,
        message=exc.message,
        details=exc.details,
        headers=exc.headers,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    default_phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else default_phrase
    if status == 404 and message == "Not Found":
        message = f"No resource at {request.url.path}"
    elif status == 405 and message == "Method Not Allowed":
        message = f"Method {request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(
        request,
        status=status,
        code=CODES_BY_STATUS.get(status, "error"),
        message=message,
        headers=headers,
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path. Starlette's own 405 names only the first
    route whose path matched, so `GET, POST` on one path (two routes) came out as `GET`.
    FastAPI keeps included routers lazily; `iter_route_contexts` walks them flattened."""
    root_path = request.scope.get("root_path", "")
    path = request.scope["path"].removeprefix(root_path) or "/"
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.methods and route.path and compile_path(route.path)[0].match(path):
            methods |= route.methods
    return ", ".join(sorted(methods))


def _field_path(location: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in location)


# Whatever the input (a key may be 1 MB long), each text in an error is clipped, and the list is
# cut at VALIDATION_MAX_ERRORS: 500 000 unknown keys once made a 44 MB error body.
_MAX_ERROR_TEXT = 120
_UNPRINTABLE = dict.fromkeys((*range(32), 127), "?")  # JSON escapes them 6 bytes each


def _clip(text: str, limit: int = _MAX_ERROR_TEXT) -> str:
    text = text.translate(_UNPRINTABLE)
    if len(text.encode()) <= limit:
        return text
    clipped = text.encode()[: limit - 3].decode(errors="ignore")
    return clipped + "..."


def validation_error_handler(
    max_errors: int,
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        # Never echo `input` back: it may hold a password.
        details = [
            ErrorDetail(
                field=_clip(_field_path(err.get("loc", ()))),
                message=_clip(str(err["msg"])),
                type=_clip(str(err["type"])),
            )
            for err in errors[:max_errors]
        ]
        dropped = len(errors) - len(details)
        if dropped:
            details.append(
                ErrorDetail(message=f"{dropped} more errors not listed", type="too_many_errors")
            )
        summary = "; ".join(f"{d.field}: {d.message}" for d in details[:3] if d.field is not None)
        return error_response(
            request,
            status=422,
            code="validation_error",
            message=f"Invalid request: {summary}" if summary else "Invalid request",
            details=details,
        )

    return _validation_error


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    # This runs outside the request middleware (its log context is gone): name the request.
    structlog.stdlib.get_logger("app.errors").error(
        "unhandled error",
        exc_info=exc,
        request_id=request_id_of(request.scope),
        method=_method(request),
        path=request.url.path,
    )
    return error_response(
        request, status=500, code="internal_error", message="Internal server error"
    )


# SQLSTATE classes of a server that is away, not of a bad query: 08 connection exception,
# 57P01-57P03 administrator/crash shutdown and "cannot connect now" (starting up or stopping).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# Seconds a client should wait before retrying while the database restarts.
DATABASE_RETRY_AFTER = "5"


def database_unavailable(exc: BaseException) -> bool:
    """Is this the database being down or restarting (worth a retry), rather than a bug?

    Seen on a real stack while PostgreSQL restarts: asyncpg's CannotConnectNowError and
    AdminShutdownError wrapped in SQLAlchemy's DBAPIError, a dropped pooled connection
    (`connection_invalidated`), and, while the server is gone, a refused connection or an
    unresolvable host name, which SQLAlchemy passes through unwrapped.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, ConnectionError | socket.gaierror):
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        current = current.__cause__ or current.__context__
    return False


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        raise exc  # a real bug: the 500 handler logs it with its traceback
    return _unavailable(
        request,
        event="database unavailable",
        message="The database is briefly unavailable; try again soon.",
        retry_after=DATABASE_RETRY_AFTER,
        error=f"{type(exc).__name__}: {exc}"[:300],
    )


def _method(connection: HTTPConnection) -> str:
    """The request's method for a log line. Handlers also get the WebSocket of a handshake
    that failed before it was accepted (Starlette sends their response as the HTTP denial),
    and a WebSocket has no `.method`."""
    method: str = connection.scope.get("method", "WEBSOCKET")
    return method


def _unavailable(
    request: HTTPConnection, *, event: str, message: str, retry_after: str, **log: object
) -> JSONResponse:
    """A passing overload or outage, not a bug: one warning line, no traceback, and a 503
    telling the client when to try again."""
    structlog.stdlib.get_logger("app.errors").warning(
        event,
        **log,
        request_id=request_id_of(request.scope),
        method=_method(request),
        path=request.url.path,
    )
    return error_response(
        request,
        status=503,
        code="service_unavailable",
        message=message,
        headers={"Retry-After": retry_after},
    )


# Seconds a client should wait when every pooled connection was busy past the pool timeout.
POOL_RETRY_AFTER = "2"


async def _pool_timeout(request: Request, exc: Exception) -> JSONResponse:
    """Every pooled connection stayed busy for DATABASE_POOL_TIMEOUT_SECONDS: overload, not a
    bug, so 503 with Retry-After (it was a 500 with a traceback)."""
    return _unavailable(
        request,
        event="database pool exhausted",
        message="The service is busy; try again soon.",
        retry_after=POOL_RETRY_AFTER,
    )


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]

# Close codes for an error after a WebSocket was accepted (RFC 6455 section 7.4.1, and 1013
# "Try Again Later" from the IANA registry): an outage or overload is worth a reconnect later.
_WS_TRY_AGAIN_LATER = 1013
_WS_INTERNAL_ERROR = 1011
_WS_POLICY_VIOLATION = 1008
_WS_REASON_BYTES = 123  # a close frame's reason fits in 125 bytes with its 2-byte code


def _websocket_aware(handler: Handler) -> Callable[[Request, Exception], Awaitable[Any]]:
    """Starlette also calls exception handlers for WebSocket routes, with the endpoint's own
    WebSocket, and sends the returned response as the handshake's HTTP denial. That is right
    before the accept; after it (our WebSockets authenticate once accepted) no HTTP response
    can go out, so the error becomes a close frame: 1013 for a 503 (the pool or the database
    is busy or away: reconnect later), 1011 for any other 5xx, 1008 for a refusal."""

    async def handle(connection: Request, exc: Exception) -> JSONResponse | None:
        response = await handler(connection, exc)
        if not (
            isinstance(connection, WebSocket)
            and connection.application_state == WebSocketState.CONNECTED
        ):
            return response
        status = response.status_code
        if status == 503:
            code = _WS_TRY_AGAIN_LATER
        else:
            code = _WS_INTERNAL_ERROR if status >= 500 else _WS_POLICY_VIOLATION
        message = HTTPStatus(status).phrase
        await connection.close(code, message.encode()[:_WS_REASON_BYTES].decode(errors="ignore"))
        return None

    return handle


def install_error_handlers(app: FastAPI, *, max_validation_errors: int = 20) -> None:
    handlers: list[tuple[type[Exception], Handler]] = [
        (AppError, _app_error),
        # A database restart is a 503 with Retry-After, like a Redis outage, never a 500.
        (DBAPIError, _database_error),
        (ConnectionError, _database_error),
        (socket.gaierror, _database_error),
        (PoolTimeout, _pool_timeout),
        (StarletteHTTPException, _http_error),
        (RequestValidationError, validation_error_handler(max_validation_errors)),
    ]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, _websocket_aware(handler))
    # Exception's handler runs in Starlette's ServerErrorMiddleware, for HTTP only: an
    # unexpected error in a WebSocket is uvicorn's (a traceback, close 1011).
    app.add_exception_handler(Exception, _unhandled_error)


# OpenAPI: every route documents the envelope for the errors it can answer with.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": HTTPStatus(status).phrase}
    for status in (400, 401, 403, 404, 409, 422, 429, 500)
}
