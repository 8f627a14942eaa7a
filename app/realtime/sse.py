"""RT-4: `GET /api/v1/notifications/stream`: the same notifications as Server-Sent Events.

FastAPI's EventSourceResponse adds a keep-alive comment after 15 s of silence, so proxies
don't cut an idle stream. Each event's id is the notification's: a browser's EventSource
sends the last one back as `Last-Event-ID` when it reconnects, and the stream resumes after
it from the database.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.auth.principal import Principal
from app.core.limits import RateLimited
from app.core.ratelimit import Decision
from app.core.request_context import client_ip_of
from app.realtime import service
from app.realtime.dependencies import RealtimeDep, StreamPrincipal
from app.realtime.limits import connect_refusal
from app.realtime.manager import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHORIZED,
    MissedFrames,
    ShuttingDown,
    Subscriber,
    TooManyConnections,
)
from app.realtime.runtime import Realtime
from app.realtime.ws import LatestId, resume

router = APIRouter(prefix="/notifications", tags=["notifications"])
RETRY_MILLISECONDS = 2000


def _resume_point(last_event_id: str | None, last_id: int | None) -> int | None:
    if last_event_id is not None and last_event_id.isdigit() and len(last_event_id) < 20:
        return int(last_event_id)
    return last_id


def _refuse(refusal: Decision | None) -> None:
    if refusal is not None:
        retry_after = refusal.headers()["Retry-After"]
        raise RateLimited(
            f"Too many connections; retry in {retry_after} s", headers=refusal.headers()
        )


async def client_connects(request: Request, rt: RealtimeDep) -> None:
    """Counted before the token is checked: refusing costs no token check or database read."""
    _refuse(await connect_refusal(rt, client=client_ip_of(request.scope), user_id=None))


async def user_connects(principal: StreamPrincipal, rt: RealtimeDep) -> Principal:
    _refuse(await connect_refusal(rt, client=None, user_id=principal.id))
    return principal


def _stored(rt: Realtime, user_id: int) -> tuple[MissedFrames, LatestId]:
    """How a stream reads what it missed, and where a newcomer stands."""

    async def missed(after_id: int) -> list[tuple[int, str]]:
        async with rt.sessionmaker() as session:
            found = await service.missed_notifications(
                session=session, user_id=user_id, after_id=after_id
            )
        return [(n.id, n.model_dump_json()) for n in found]

    async def latest() -> int:
        async with rt.sessionmaker() as session:
            return await service.latest_notification_id(session=session)

    return missed, latest


@router.get("/stream", response_class=EventSourceResponse)
async def notification_stream(
    _client: Annotated[None, Depends(client_connects)],
    principal: Annotated[Principal, Depends(user_connects)],
    rt: RealtimeDep,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    last_id: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Your notifications as they happen; resumes after `Last-Event-ID` (or `last_id`).
    Connects are limited per client address and per user (429 with Retry-After).
    When the session ends (logout, password change, role change, deactivation, deletion) a
    last `event: revoked` (`{"code": 4401 | 4403, "reason": ...}`) ends the stream."""
    subscriber = Subscriber(
        principal.id, rt.settings.ws_send_queue_size, session_id=principal.session_id
    )
    try:
        await rt.manager.admit(subscriber)
    except (TooManyConnections, ShuttingDown) as exc:
        reason = "too_many_connections" if isinstance(exc, TooManyConnections) else "shutting_down"
        yield ServerSentEvent(event="error", data={"code": reason}, retry=RETRY_MILLISECONDS * 5)
        return
    channels = [service.user_channel(principal.id), service.BROADCAST_CHANNEL]
    try:
        await rt.watch.confirm(subscriber)  # closes it if the session ended meanwhile
        subscriber.hold()
        for channel in channels:
            await rt.manager.join(subscriber, channel)
        yield ServerSentEvent(comment="connected", retry=RETRY_MILLISECONDS)
        # Missed ones are queued like live ones: a hub reconnect later catches up the same way.
        missed, latest = _stored(rt, principal.id)
        await resume(subscriber, missed, latest, _resume_point(last_event_id, last_id))
        # Ends when the server shuts down, when this client fell too far behind (it
        # reconnects with Last-Event-ID and reads the rest from the database), or when its
        # session ended (it must not reconnect with the same token).
        while (frame := await subscriber.next()) is not None:
            frame_id, text = frame
            yield ServerSentEvent(
                raw_data=text,
                id=str(frame_id) if frame_id is not None else None,
                event="notification",
            )
        if subscriber.close_code in (CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN):
            yield ServerSentEvent(
                event="revoked",
                data={"code": subscriber.close_code, "reason": subscriber.close_reason},
            )
    finally:
        for channel in channels:
            rt.manager.leave(subscriber, channel)
        rt.manager.unregister(subscriber)
