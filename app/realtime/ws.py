"""What every WebSocket endpoint does: check the Origin, authenticate (keeping the token out
of URLs where the client allows it), then move frames both ways until one side ends.

Each connection runs a reader and a writer task. The writer drains the connection's bounded
buffer (see manager.py); the reader handles what the client sends. The endpoint itself waits
for the subscriber to close, whoever closes it: the client, a policy breach, a full buffer,
an idle timeout, or the server shutting down.
"""

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from app.auth import principal as principals
from app.auth.permissions import Scope
from app.auth.principal import Principal
from app.core.config import Settings
from app.core.dependencies import services_of
from app.core.errors import Unauthorized, error_response
from app.core.ratelimit import Decision
from app.core.request_context import client_ip_of, set_user_id
from app.core.security import InvalidToken
from app.realtime.limits import connect_refusal
from app.realtime.manager import (
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_UNAUTHORIZED,
    MissedFrames,
    ShuttingDown,
    Subscriber,
    TooManyConnections,
)
from app.realtime.runtime import Realtime

logger = logging.getLogger("app.realtime")
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL_ERROR = 1011
# Over a connect limit but already accepted (the token came in the first frame, or the server
# can't send an HTTP denial): the 429 as an application close code.
CLOSE_RATE_LIMITED = 4429
DENIAL_EXTENSION = "websocket.http.response"
# `Sec-WebSocket-Protocol: bearer, <token>`: browsers can't set an Authorization header on a
# WebSocket, and unlike a query string this header is never written to an access log.
SUBPROTOCOL = "bearer"
PONG = '{"type":"pong"}'
_MAX_REASON_BYTES = 123  # what fits in a close frame

FrameHandler = Callable[[Subscriber, dict[str, Any]], Awaitable[None]]
LatestId = Callable[[], Awaitable[int]]


class PolicyViolation(Exception):
    """The client broke the protocol: the connection is closed with 1008."""

    code = CLOSE_POLICY


class InvalidFrameData(PolicyViolation):
    """Text that is not valid Unicode (a lone surrogate from a `\\ud800` escape): 1007.

    Such a str cannot be encoded, so it would fail deep in the database driver or the JSON
    encoder (a 1011 and a traceback); it is refused where frames are parsed instead."""

    code = CLOSE_INVALID_DATA


# A JSON escape of a UTF-16 surrogate: only text with one can decode to a lone surrogate, so
# only that text pays for the full check (re-encoding what was decoded).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass(frozen=True, slots=True)
class Authenticated:
    principal: Principal
    last_id: int | None  # the last message or notification the client saw, to resume after


def error_frame(code: str, message: str, **extra: object) -> str:
    return json.dumps({"type": "error", "code": code, "message": message, **extra})


def origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """Browsers always send Origin; other clients may not, and Origin guards only browsers."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    allowed = {*settings.cors_origins, *settings.ws_allowed_origins}
    if "*" in allowed or origin in allowed:
        return True
    host = websocket.headers.get("host", "").lower()
    return bool(host) and urlsplit(origin).netloc.lower() == host


def _offered_token(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(token, subprotocol to accept) from the subprotocol header, else the query string."""
    offered: list[str] = websocket.scope.get("subprotocols", [])
    if SUBPROTOCOL in offered:
        others = [p for p in offered if p != SUBPROTOCOL]
        return (others[0] if others else None), SUBPROTOCOL
    return websocket.query_params.get("token"), None


def _as_last_id(value: object) -> int | None:
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    raise PolicyViolation("last_id must be a non-negative integer")


def _parse(message: MutableMapping[str, Any]) -> dict[str, Any]:
    text = message.get("text")
    if text is None:
        raise PolicyViolation("frames must be JSON text")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PolicyViolation("frames must be JSON") from exc
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:  # paired surrogates decode to one character: fine
            raise InvalidFrameData("text must be valid Unicode (no lone surrogates)") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise PolicyViolation("frames must be JSON objects with a type")
    return data


def _log_refusal(exc: PolicyViolation) -> None:
    """One line, no traceback: a client's bad frame is its problem, not a server fault."""
    logger.info("websocket closed (%d): %s", exc.code, exc)


async def close(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Close unless the peer is gone; never wait forever on a client that stopped reading."""
    reason = reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect, TimeoutError):
        async with asyncio.timeout(5):
            await websocket.close(code, reason)


async def authenticate(websocket: WebSocket, rt: Realtime) -> Authenticated | None:
    """The caller, or None once the connection has been refused and closed."""
    if not origin_allowed(websocket, rt.settings):
        await websocket.close(CLOSE_POLICY)  # before accepting: the handshake gets 403
        return None
    token, subprotocol = _offered_token(websocket)
    claimed = _claimed_user(websocket, token)
    refusal = await connect_refusal(rt, client=client_ip_of(websocket.scope), user_id=claimed)
    if refusal is not None:
        await _refuse(websocket, refusal)
        return None
    await websocket.accept(subprotocol=subprotocol)
    if rt.manager.stopping.is_set():
        await close(websocket, CLOSE_GOING_AWAY, "server shutting down")
        return None
    auth = await _authenticate_accepted(websocket, rt, token)
    if auth is not None and claimed is None:
        # The token came in the first frame: the user's connects are counted only now.
        refusal = await connect_refusal(rt, client=None, user_id=auth.principal.id)
        if refusal is not None:
            await close(websocket, CLOSE_RATE_LIMITED, _too_many(refusal))
            return None
    return auth


async def _authenticate_accepted(
    websocket: WebSocket, rt: Realtime, token: str | None
) -> Authenticated | None:
    try:
        credentials = await _credentials(websocket, rt.settings, token)
    except PolicyViolation as exc:
        _log_refusal(exc)
        await close(websocket, exc.code, str(exc))
        return None
    if credentials is None:
        return None
    principal = await _verify(websocket, credentials[0])
    return Authenticated(principal, credentials[1]) if principal is not None else None


def _claimed_user(websocket: WebSocket, token: str | None) -> int | None:
    """The user a handshake's token names, if it is one we signed (whether it is still valid
    is checked after the accept, where a refusal has its own close code)."""
    if token is None:
        return None
    try:
        return services_of(websocket).token_verifier.decode(token).user_id
    except InvalidToken:
        return None


def _too_many(decision: Decision) -> str:
    return f"Too many connections; retry in {decision.headers()['Retry-After']} s"


async def _refuse(websocket: WebSocket, decision: Decision) -> None:
    """Over a connect limit before the accept: an HTTP 429 in the error envelope where the
    server can answer a handshake with a response (uvicorn can), else accept and close 4429."""
    message = _too_many(decision)
    if DENIAL_EXTENSION in websocket.scope.get("extensions", {}):
        response = error_response(
            websocket, status=429, code="rate_limited", message=message,
            headers=decision.headers(),
        )  # fmt: skip
        await websocket.send_denial_response(response)
        return
    await websocket.accept()
    await close(websocket, CLOSE_RATE_LIMITED, message)


async def _credentials(
    websocket: WebSocket, settings: Settings, token: str | None
) -> tuple[str, int | None] | None:
    """(token, last id seen) from the handshake, else from the first message."""
    query = websocket.query_params
    last_id = _as_last_id(query["last_id"]) if "last_id" in query else None
    if token is not None:
        return token, last_id
    try:
        async with asyncio.timeout(settings.ws_auth_timeout_seconds):
            message = await websocket.receive()
    except TimeoutError:
        await close(websocket, CLOSE_UNAUTHORIZED, "authentication timed out")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    data = _parse(message)
    token = data.get("token")
    if data["type"] != "auth" or not isinstance(token, str):
        await close(websocket, CLOSE_UNAUTHORIZED, 'authenticate first: {"type": "auth", ...}')
        return None
    if data.get("last_id") is not None:
        last_id = _as_last_id(data["last_id"])
    return token, last_id


async def _verify(websocket: WebSocket, token: str) -> Principal | None:
    """The same checks as every HTTP request: signature and claims, then revocation."""
    services = services_of(websocket)
    try:
        claims = services.token_verifier.decode(token)
        principal = await principals.resolve(
            cache=services.cache, sessionmaker=services.sessionmaker, claims=claims
        )
    except (InvalidToken, Unauthorized) as exc:
        await close(websocket, CLOSE_UNAUTHORIZED, str(exc))
        return None
    if not principal.is_active or Scope.PROFILE not in principal.scopes:
        await close(websocket, CLOSE_FORBIDDEN, "not allowed")
        return None
    set_user_id(websocket.scope, principal.id)
    return principal


class _Connection:
    """The two halves of one socket: reading what the client sends, writing its buffer."""

    def __init__(
        self, websocket: WebSocket, subscriber: Subscriber, on_frame: FrameHandler, idle: float
    ) -> None:
        self.websocket = websocket
        self.subscriber = subscriber
        self.on_frame = on_frame
        self.idle = idle
        self.client_gone = False

    async def read(self) -> None:
        try:
            while True:
                async with asyncio.timeout(self.idle):
                    message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    self.client_gone = True
                    self.subscriber.close(int(message.get("code") or CLOSE_NORMAL))
                    return
                data = _parse(message)
                if data["type"] == "ping":
                    self.subscriber.offer(None, PONG)
                else:
                    await self.on_frame(self.subscriber, data)
        except PolicyViolation as exc:
            _log_refusal(exc)
            self.subscriber.close(exc.code, str(exc))
        except TimeoutError:
            self.subscriber.close(CLOSE_NORMAL, "idle timeout")
        except WebSocketDisconnect:
            self.client_gone = True
            self.subscriber.close(CLOSE_NORMAL)
        except Exception:
            # A bug or an outage (database down): say so, rather than leave a socket that
            # looks alive and ignores everything it is sent.
            logger.exception("websocket frame handler failed")
            self.subscriber.close(CLOSE_INTERNAL_ERROR, "internal error")

    async def write(self) -> None:
        try:
            while (frame := await self.subscriber.next()) is not None:
                await self.websocket.send_text(frame[1])
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.client_gone = True
            self.subscriber.close(CLOSE_NORMAL)


async def resume(
    subscriber: Subscriber,
    missed: MissedFrames | None,
    latest: LatestId | None,
    last_id: int | None,
) -> None:
    """Between joining the channels (live frames held) and going live: queue what the client
    missed since `last_id`, and remember where it stands so that what a hub reconnect loses
    is read from the database too. Without a `last_id` it stands at the newest stored row."""
    if missed is not None:
        if last_id is not None:
            subscriber.follow(missed, last_id)
            await subscriber.catch_up()
        elif latest is not None:
            subscriber.follow(missed, await latest())
    subscriber.release(set())


async def serve(
    websocket: WebSocket,
    rt: Realtime,
    *,
    auth: Authenticated,
    channels: Sequence[str],
    on_frame: FrameHandler,
    missed: MissedFrames | None = None,
    latest: LatestId | None = None,
    on_open: Callable[[Subscriber], Awaitable[None]] | None = None,
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> None:
    subscriber = Subscriber(
        auth.principal.id, rt.settings.ws_send_queue_size, session_id=auth.principal.session_id
    )
    try:
        await rt.manager.admit(subscriber)
    except TooManyConnections:
        await close(websocket, CLOSE_POLICY, "too many connections for this user")
        return
    except ShuttingDown:
        await close(websocket, CLOSE_GOING_AWAY, "server shutting down")
        return
    connection = _Connection(websocket, subscriber, on_frame, rt.settings.ws_idle_timeout_seconds)
    tasks: list[asyncio.Task[None]] = []
    try:
        await rt.watch.confirm(subscriber)  # closes it if the session ended meanwhile
        await _subscribe(rt, subscriber, channels, missed, latest, auth.last_id)
        tasks = [asyncio.create_task(connection.write()), asyncio.create_task(connection.read())]
        if on_open is not None:
            await on_open(subscriber)
        await subscriber.closed.wait()
    finally:
        for channel in channels:
            rt.manager.leave(subscriber, channel)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if on_close is not None:
                await on_close()
            if not connection.client_gone:
                code = subscriber.close_code or CLOSE_NORMAL
                await close(websocket, code, subscriber.close_reason)
        finally:
            # Last: a graceful shutdown waits for this, so the 1001 has gone out by then.
            rt.manager.unregister(subscriber)


async def _subscribe(
    rt: Realtime,
    subscriber: Subscriber,
    channels: Sequence[str],
    missed: MissedFrames | None,
    latest: LatestId | None,
    last_id: int | None,
) -> None:
    """Join the channels, then queue what was missed since `last_id`. Live frames are held
    until then, and those already caught up are dropped, so none is lost or sent twice."""
    subscriber.hold()
    for channel in channels:
        await rt.manager.join(subscriber, channel)
    await resume(subscriber, missed, latest, last_id)
