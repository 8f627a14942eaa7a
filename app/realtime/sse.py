"""RT-4: `GET /api/v1/notifications/stream`: the same notifications as Server-Sent Events.

FastAPI's EventSourceResponse adds a keep-alive comment after 15 s of silence, so proxies
don't cut an idle stream. Each event's id is the notification's: a browser's EventSource
sends the last one back as `Last-Event-ID` when it reconnects, and the stream resumes after
it from the database.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.realtime import service
from app.realtime.dependencies import RealtimeDep, StreamPrincipal
from app.realtime.manager import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHORIZED,
    ShuttingDown,
    Subscriber,
    TooManyConnections,
)
from app.realtime.runtime import Realtime
from app.realtime.schemas import NotificationRead

router = APIRouter(prefix="/notifications", tags=["notifications"])
RETRY_MILLISECONDS = 2000


def _resume_point(last_event_id: str | None, last_id: int | None) -> int | None:
    if last_event_id is not None and last_event_id.isdigit() and len(last_event_id) < 20:
        return int(last_event_id)
    return last_id


async def _missed(rt: Realtime, user_id: int, after: int | None) -> list[NotificationRead]:
    if after is None:
        return []
    async with rt.sessionmaker() as session:
        return await service.missed_notifications(session=session, user_id=user_id, after_id=after)


@router.get("/stream", response_class=EventSourceResponse)
async def notification_stream(
    principal: StreamPrincipal,
    rt: RealtimeDep,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    last_id: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Your notifications as they happen; resumes after `Last-Event-ID` (or `last_id`).
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
        missed = await _missed(rt, principal.id, _resume_point(last_event_id, last_id))
        for notification in missed:
            yield ServerSentEvent(
                raw_data=notification.model_dump_json(),
                id=str(notification.id),
                event="notification",
            )
        subscriber.release({notification.id for notification in missed})
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
