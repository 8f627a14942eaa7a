"""RT-1: `WS /ws/chat/{room}`: join a room, send messages, see everyone's as they arrive."""

import json
import logging
import re

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError

from app.core.schemas import NO_NUL_PATTERN
from app.realtime import service, ws
from app.realtime.dependencies import RealtimeDep
from app.realtime.errors import RoomForbidden
from app.realtime.limits import LocalWindow
from app.realtime.manager import CLOSE_FORBIDDEN, CLOSE_POLICY, MissedFrames, Subscriber
from app.realtime.models import ChatRoom
from app.realtime.runtime import Realtime
from app.realtime.schemas import ROOM_NAME_PATTERN, ChatUser

logger = logging.getLogger("app.realtime")
router = APIRouter(tags=["realtime"])
_ROOM_NAME = re.compile(ROOM_NAME_PATTERN)
_NO_NUL = re.compile(NO_NUL_PATTERN)


def _event(kind: str, room: str, user: ChatUser) -> bytes:
    """Join, leave and typing: not stored, so no id (nothing to resume)."""
    return json.dumps({"type": kind, "room": room, "user": user.model_dump()}).encode()


def _content_of(data: dict[str, object], max_length: int) -> str | None:
    content = data.get("content")
    if (
        isinstance(content, str)
        and content.strip()
        and len(content) <= max_length
        and _NO_NUL.match(content)
    ):
        return content
    return None


async def _throttled(rt: Realtime, presence: LocalWindow, kind: object, user_id: int) -> str | None:
    """An error frame for a frame over a limit: typing per connection, all frames per user."""
    if kind == "typing" and (retry_after := presence.hit()) is not None:
        return ws.error_frame("rate_limited", "Too many presence changes", retry_after=retry_after)
    decision = await rt.limiter.hit(rt.policies.chat_message, str(user_id))
    if decision is not None and not decision.allowed:
        retry_after = int(decision.headers()["Retry-After"])
        return ws.error_frame("rate_limited", "Too many messages", retry_after=retry_after)
    return None


def _stored(rt: Realtime, room: ChatRoom) -> tuple[MissedFrames, ws.LatestId]:
    """How a connection to `room` reads what it missed, and where a newcomer stands."""

    async def missed(after_id: int) -> list[tuple[int, str]]:
        async with rt.sessionmaker() as session:
            messages = await service.missed_messages(session=session, room=room, after_id=after_id)
        return [(m.id, m.model_dump_json()) for m in messages]

    async def latest() -> int:
        async with rt.sessionmaker() as session:
            return await service.latest_message_id(session=session, room=room)

    return missed, latest


@router.websocket("/ws/chat/{room}")
async def chat_socket(websocket: WebSocket, room: str, rt: RealtimeDep) -> None:
    auth = await ws.authenticate(websocket, rt)
    if auth is None:
        return
    if not _ROOM_NAME.match(room):
        await ws.close(websocket, CLOSE_POLICY, "invalid room name")
        return
    async with rt.sessionmaker() as session:
        try:
            chat_room = await service.open_room(
                session=session, name=room, principal=auth.principal
            )
        except RoomForbidden as exc:
            await ws.close(websocket, CLOSE_FORBIDDEN, exc.message)
            return
        author = await service.chat_user(session=session, user_id=auth.principal.id)
    channel = service.chat_channel(chat_room.name)
    hub = rt.manager.hub
    max_length = rt.settings.chat_message_max_length
    room_lock = rt.room_lock(chat_room.name)
    presence = LocalWindow(rt.policies.chat_presence)  # this connection's typing frames
    missed, latest = _stored(rt, chat_room)

    async def publish(frame: bytes) -> None:
        try:
            await hub.publish(channel, frame)
        except (RedisError, OSError) as exc:  # stored messages are caught up on reconnect
            logger.warning("chat frame not published to %s: %s", channel, exc)

    async def on_frame(subscriber: Subscriber, data: dict[str, object]) -> None:
        kind = data["type"]
        if kind not in ("message", "typing"):
            raise ws.PolicyViolation(f"unknown frame type {str(kind)[:40]!r}")
        refused = await _throttled(rt, presence, kind, author.id)
        if refused is not None:
            subscriber.offer(None, refused)
            return
        if kind == "typing":
            await publish(_event("typing", chat_room.name, author))
            return
        content = _content_of(data, max_length)
        if content is None:
            message = f"content must be 1 to {max_length} characters of text"
            subscriber.offer(None, ws.error_frame("validation_error", message))
            return
        async with room_lock, rt.sessionmaker() as session:
            stored = await service.post_message(
                session=session, room=chat_room, author=author, content=content
            )
            await publish(stored.model_dump_json().encode())

    # Presence in a big room would cost N frames per arrival, N² to fill it: there, only the
    # newcomer hears its own join (its sign that it is in), and nobody hears leaves.
    def presence_is_broadcast() -> bool:
        return rt.manager.members(channel) <= rt.settings.chat_presence_max_members

    async def joined(subscriber: Subscriber) -> None:
        if presence_is_broadcast():
            await publish(_event("join", chat_room.name, author))
        else:
            subscriber.offer(None, _event("join", chat_room.name, author).decode())

    async def left() -> None:
        if presence_is_broadcast():
            await publish(_event("leave", chat_room.name, author))

    await ws.serve(
        websocket,
        rt,
        auth=auth,
        channels=[channel],
        on_frame=on_frame,
        missed=missed,
        latest=latest,
        on_open=joined,
        on_close=left,
    )
